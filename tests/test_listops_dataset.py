"""qa_tasks/listops/dataset.py: ListOps labels, the LRA generator, and both file formats."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qa_tasks.listops import dataset as listops


# ---- ListOps: labels against an independent evaluator -------------------------------------------

def reference_value(tokens: list[str]) -> int:
    """A separate evaluator: a stack machine over the token strings (not listops.evaluate)."""
    stack: list = []
    for tok in tokens:
        if tok == "]":
            args = []
            while not isinstance(stack[-1], str):
                args.append(stack.pop())
            op = stack.pop()
            value = {"[MAX": max, "[MIN": min, "[SM": lambda a: sum(a) % 10,
                     "[MED": lambda a: math.floor(statistics.median(a))}[op](args)
            stack.append(value)
        elif tok.isdigit():
            stack.append(int(tok))
        else:
            stack.append(tok)
    (value,) = stack
    return value


trees = st.recursive(st.integers(0, 9),
                     lambda sub: st.tuples(st.sampled_from(listops.OPERATORS), st.lists(sub, min_size=1, max_size=6)),
                     max_leaves=40)


@pytest.mark.timeout(120)
@settings(max_examples=200, deadline=None)
@given(trees)
def test_labels_match_an_independent_evaluator(tree):
    tokens = listops.to_tokens(tree)
    assert listops.evaluate(listops.parse(tokens)) == reference_value(tokens)


@pytest.mark.timeout(60)
def test_generator_follows_the_spec_and_is_deterministic():
    spec = listops.ListOpsSpec(min_length=20, max_length=60, max_depth=6, max_args=5,
                               n_train=150, n_valid=20, n_test=20, seed=3)
    splits = listops.generate(spec)
    assert {k: len(v) for k, v in splits.items()} == {"train": 150, "valid": 20, "test": 20}
    sources = [s for rows in splits.values() for s, _ in rows]
    assert len(set(sources)) == len(sources)                        # distinct across splits
    for source, label in splits["train"]:
        tokens = source.split()
        assert 20 <= len(tokens) <= 60
        assert label == reference_value(tokens)
        assert set(tokens) <= set(listops.DIGITS + listops.OPERATORS + (listops.END,))
    depth = max(max(np.cumsum([(t in listops.OPERATORS) - (t == "]") for t in s.split()]))
                for s in sources)
    assert depth <= spec.max_depth - 1
    assert listops.generate(spec) == splits
    assert listops.generate(listops.ListOpsSpec(**{**spec.__dict__, "seed": 4})) != splits
    assert len({label for _, label in splits["train"]}) == 10       # every class occurs


# ---- file formats -------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_both_tsv_formats_round_trip(tmp_path):
    spec = listops.ListOpsSpec(min_length=5, max_length=40, n_train=50, n_valid=0, n_test=0)
    rows = listops.generate(spec)["train"]
    listops.write_lra_tsv(tmp_path / "basic_train.tsv", rows)
    listops.write_original_tsv(tmp_path / "train_d20s.tsv", rows)
    assert (tmp_path / "basic_train.tsv").read_text().startswith("Source\tTarget\n")
    assert "( " in (tmp_path / "train_d20s.tsv").read_text()
    want = [(s.split(), label) for s, label in rows]
    assert listops.read_lra_tsv(tmp_path / "basic_train.tsv") == want
    assert listops.read_original_tsv(tmp_path / "train_d20s.tsv") == want


@pytest.mark.timeout(60)
def test_original_rendering_is_lras(tmp_path):
    path = tmp_path / "train.tsv"
    listops.write_original_tsv(path, [("[MAX 2 9 ]", 9)])
    assert path.read_text() == "9\t( ( ( [MAX 2 ) 9 ) ] )\n"   # LRA's to_string of its tuples


LRA_BAD = [
    ("Src\tTgt\n[MAX 1 ]\t1\n", "line 1: header"),
    ("Source\tTarget\n[MAX 1 ]\t1\t3\n", "line 2: 3 tab-separated fields"),
    ("Source\tTarget\n[MAX 1 ]\t1\n[MAX 1 ]\tx\n", "line 3: label 'x' is not a class"),
    ("Source\tTarget\n[MAX 1 ]\t12\n", "label '12' is not a class"),
    ("Source\tTarget\n[MAX 1 [FOO 2 ] ]\t1\n", "token 2 '\\[FOO' is not ListOps"),
    ("Source\tTarget\n[MAX 1 [MIN 2 ]\t1\n", "never closed"),
    ("Source\tTarget\n[MAX 1 ] ]\t1\n", "after the end of the expression"),
    ("Source\tTarget\n]\t1\n", "closes nothing"),
    ("Source\tTarget\n[MAX ]\t1\n", "no operands"),
    ("Source\tTarget\n[MAX 1 7 ]\t1\n", "label 1 but the expression evaluates to 7"),
]


ORIGINAL_BAD = [
    ("( [MAX 1 ) ]\t1\n", "line 1: label"),
    ("1\t( [MAX 1 ]\n", "1 '\\(' but 0 '\\)'"),
    ("1\n", "1 tab-separated fields"),
    ("3\t( ( [SM 1 ) 1 ) ]\n", "label 3 but the expression evaluates to 2"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reader, name, text, pattern",
                         [("read_lra_tsv", "basic_train.tsv", *case) for case in LRA_BAD]
                         + [("read_original_tsv", "train_d20s.tsv", *case) for case in ORIGINAL_BAD])
def test_malformed_tsv_is_a_clear_error(tmp_path, reader, name, text, pattern):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=pattern) as e:
        getattr(listops, reader)(path)
    assert str(path) in str(e.value)
