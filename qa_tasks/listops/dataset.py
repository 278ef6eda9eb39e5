"""ListOps: nested list operations over digits, as generated for the Long Range Arena.

ListOps (Nangia & Bowman, "ListOps: A Diagnostic Dataset for Latent Tree Learning", 2018) asks a
model for the value of an expression such as

    [MAX 2 9 [MIN 4 7 ] 0 ]      ->  9

The Long Range Arena (Tay et al., "Long Range Arena: A Benchmark for Efficient Transformers",
ICLR 2021; generator `lra_benchmarks/data/listops.py`) made it a long-sequence task:

- operators MAX, MIN, MED (median) and SM (sum modulo 10), written `[MAX` ... `]`;
- operands are the digits 0-9 or nested expressions;
- a random tree: at depth d < max_depth a node is an operator with probability 1 - VALUE_P
  (= 0.75), else a digit; at depth max_depth always a digit (the root is depth 1, so operators
  nest at most max_depth - 1 deep); an operator takes uniformly 2..max_args operands;
- the length of an example is its number of tokens (digits, `[OP` and `]`); trees outside the
  length range are rejected; examples are distinct; LRA's setting is max_depth 10, max_args 10,
  lengths 500..2000, 96,000 / 2,000 / 2,000 train / valid / test;
- the target is the value of the expression, one of 10 classes. MED of an even number of
  operands is the mean of the two middle ones, rounded down (LRA's `int(np.median(...))`).

Two differences from LRA's script, neither changing the distribution of accepted examples:
a tree is abandoned as soon as it passes max_length (LRA builds the whole tree, which can have
millions of nodes, and then rejects it), and the length bounds are inclusive.

File formats read and written here:

- LRA TSV (`basic_train.tsv`, `basic_val.tsv`, `basic_test.tsv`): a header `Source<TAB>Target`,
  then one `expression<TAB>label` per line. LRA's released files wrap every operand in
  `(` `)`; these are accepted and dropped (they carry no information). Written without them.
- Original ListOps (Nangia & Bowman's `train_d20s.tsv` etc.): no header, one
  `label<TAB>expression` per line, with `(` `)` tokens.

Malformed files are an error naming the file, the line and what was expected.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ..common import reading, replacing

# ---- the vocabulary, fixed by the specification (ids never depend on the data) -------------------

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))
PAD, CLS = 0, 1
VOCAB = ("<pad>", "<cls>", *DIGITS, *OPERATORS, END)  # 17 tokens
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
N_CLASSES = 10
VALUE_P = 0.25  # LRA: probability that a node above max_depth is a digit
_PARENS = ("(", ")")  # in LRA's released files and the original ListOps; dropped when read

# A tree is an int (a digit) or a tuple (operator, [operand trees]).
Tree = int | tuple


def evaluate(tree: Tree) -> int:
    """The value of an expression tree (0..9). Iterative: LRA nests up to 2,000 deep, past
    Python's recursion limit."""
    if isinstance(tree, int):
        return tree
    stack = [(tree, [])]                      # open nodes and their operand values so far
    while True:
        (op, args), values = stack[-1]
        if len(values) < len(args):
            child = args[len(values)]
            if isinstance(child, int):
                values.append(child)
            else:
                stack.append((child, []))
            continue
        value = _apply(op, values)
        stack.pop()
        if not stack:
            return value
        stack[-1][1].append(value)


def _apply(op: str, values: list[int]) -> int:
    if op == "[MAX":
        return max(values)
    if op == "[MIN":
        return min(values)
    if op == "[MED":
        s = sorted(values)
        return (s[(len(s) - 1) // 2] + s[len(s) // 2]) // 2  # = int(np.median(values))
    if op == "[SM":
        return sum(values) % 10
    raise ValueError(f"unknown ListOps operator {op!r}: expected one of {', '.join(OPERATORS)}")


def to_tokens(tree: Tree) -> list[str]:
    """`(MAX, [2, 9])` -> ['[MAX', '2', '9', ']'] (iterative, as `evaluate`)."""
    out: list[str] = []
    todo: list = [tree]
    while todo:
        t = todo.pop()
        if isinstance(t, str):                # a closing bracket scheduled below
            out.append(t)
        elif isinstance(t, int):
            out.append(str(t))
        else:
            op, args = t
            out.append(op)
            todo.append(END)
            todo.extend(reversed(args))
    return out


def parse(tokens: list[str], where: str = "expression") -> Tree:
    """Tokens -> tree, checking the grammar; `(` and `)` are ignored. `where` names the source
    (e.g. "basic_train.tsv line 7") in errors."""
    stack: list[tuple[str, list]] = []  # open operators and their operands so far
    root = None
    for i, tok in enumerate(t for t in tokens if t not in _PARENS):
        if root is not None:
            raise ValueError(f"{where}: token {i} {tok!r} after the end of the expression; "
                             "expected one expression per line")
        if tok in OPERATORS:
            stack.append((tok, []))
        elif tok == END:
            if not stack:
                raise ValueError(f"{where}: token {i} ']' closes nothing; expected an operator "
                                 "like '[MAX' before it")
            op, args = stack.pop()
            if not args:
                raise ValueError(f"{where}: token {i} ']' closes {op} with no operands; expected "
                                 "at least one digit or expression")
            node = (op, args)
            if stack:
                stack[-1][1].append(node)
            else:
                root = node
        elif tok in DIGITS:
            if stack:
                stack[-1][1].append(int(tok))
            else:
                root = int(tok)
        else:
            raise ValueError(f"{where}: token {i} {tok!r} is not ListOps; expected a digit 0-9, "
                             f"one of {' '.join(OPERATORS)}, ']' or a parenthesis")
    if stack:
        raise ValueError(f"{where}: {len(stack)} operator(s) never closed ({stack[-1][0]} is "
                         "the innermost); expected a ']' for each")
    if root is None:
        raise ValueError(f"{where}: empty expression; expected digits and operators")
    return root


def encode(tokens: list[str]) -> list[int]:
    """Tokens -> ids in VOCAB (parentheses dropped)."""
    return [TOKEN_ID[t] for t in tokens if t not in _PARENS]


# ---- the generator ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ListOpsSpec:
    """What a generated ListOps dataset is; LRA's setting is ListOpsSpec.lra()."""
    min_length: int = 10
    max_length: int = 100
    max_depth: int = 10
    max_args: int = 10
    n_train: int = 2000
    n_valid: int = 200
    n_test: int = 200
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {self.min_length}, "
                             f"{self.max_length}")
        if self.max_depth < 2:
            raise ValueError(f"max_depth must be >= 2 (the root is depth 1), got {self.max_depth}")
        if self.max_args < 2:
            raise ValueError(f"max_args must be >= 2 (LRA draws 2..max_args), got {self.max_args}")
        if min(self.n_train, self.n_valid, self.n_test) < 0:
            raise ValueError(f"split sizes must be >= 0, got {self.n_train}, {self.n_valid}, "
                             f"{self.n_test}")

    @classmethod
    def lra(cls, **changes) -> "ListOpsSpec":
        """The Long Range Arena setting (lengths 500..2000, 96k/2k/2k)."""
        return cls(**{"min_length": 500, "max_length": 2000, "max_depth": 10, "max_args": 10,
                      "n_train": 96_000, "n_valid": 2000, "n_test": 2000, **changes})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class _TooLong(Exception):
    pass


def random_tree(rng: random.Random, max_depth: int, max_args: int, max_length: int) -> tuple[Tree, int]:
    """One LRA random tree and its length in tokens; raises _TooLong once it passes max_length."""
    used = 0

    def grow(depth: int) -> Tree:
        nonlocal used
        r = rng.random() if depth < max_depth else 1.0
        if r > VALUE_P:
            used += 1
            if used > max_length:
                raise _TooLong
            return rng.choice(range(10))
        used += 2  # '[OP' and ']'
        n_args = rng.randint(2, max_args)
        args = [grow(depth + 1) for _ in range(n_args)]
        if used > max_length:
            raise _TooLong
        return (rng.choice(OPERATORS), args)

    tree = grow(1)
    return tree, used


def generate(spec: ListOpsSpec, max_tries: int = 50_000_000) -> dict[str, list[tuple[str, int]]]:
    """{"train", "valid", "test"}: lists of (expression, label), distinct across all splits,
    deterministic given spec (including spec.seed)."""
    rng = random.Random(spec.seed)
    wanted = spec.n_train + spec.n_valid + spec.n_test
    seen: dict[str, int] = {}  # insertion-ordered, so the result is deterministic
    for _ in range(max_tries):
        if len(seen) == wanted:
            break
        try:
            tree, length = random_tree(rng, spec.max_depth, spec.max_args, spec.max_length)
        except _TooLong:
            continue
        if spec.min_length <= length:
            seen.setdefault(" ".join(to_tokens(tree)), evaluate(tree))
    else:
        if len(seen) < wanted:
            raise RuntimeError(f"found only {len(seen)} of {wanted} distinct ListOps examples in "
                               f"{max_tries} trees for {spec}; widen the length range or lower "
                               "the split sizes")
    items = list(seen.items())
    a, b = spec.n_train, spec.n_train + spec.n_valid
    return {"train": items[:a], "valid": items[a:b], "test": items[b:]}


# ---- files --------------------------------------------------------------------------------------

LRA_FILES = {"train": "basic_train.tsv", "valid": "basic_val.tsv", "test": "basic_test.tsv"}
ORIGINAL_FILES = {"train": "train_d20s.tsv", "test": "test_d20s.tsv"}   # Nangia & Bowman's release


def splits_in(folder: str | os.PathLike) -> dict[str, tuple[Path, bool]]:
    """The splits a listops data folder holds: split name -> (file, in LRA's format?).

    Names follow the files present: LRA's `basic_train/val/test.tsv` are "train", "valid" (also
    "val", LRA's own name) and "test"; Nangia & Bowman's `train_d20s.tsv` and `test_d20s.tsv` are
    "train" and "test" where LRA's file of that split is absent; every file is also its own stem
    ("test_d20s"), so either format can be named when both are there."""
    folder, out = Path(folder), {}
    for files, lra in ((LRA_FILES, True), (ORIGINAL_FILES, False)):
        for split, name in files.items():
            if (folder / name).is_file():
                out[Path(name).stem] = (folder / name, lra)
                out.setdefault(split, out[Path(name).stem])
    if "valid" in out:
        out["val"] = out["valid"]
    return out


def write_lra_tsv(path: str | os.PathLike, examples: list[tuple[str, int]]) -> None:
    """LRA's format: a `Source<TAB>Target` header, then `expression<TAB>label` lines."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("Source\tTarget\n")
        for source, target in examples:
            f.write(f"{source}\t{target}\n")


def write_original_tsv(path: str | os.PathLike, examples: list[tuple[str, int]]) -> None:
    """Nangia & Bowman's format: `label<TAB>expression` lines with `(` `)`, no header."""
    def with_parens(tree) -> str:  # LRA's to_string over its binary tuples: ( ( ( [MAX 2 ) 9 ) ] )
        if isinstance(tree, int):
            return str(tree)
        op, args = tree
        s = "( " + op + " " + with_parens(args[0]) + " )"
        for a in args[1:]:
            s = "( " + s + " " + with_parens(a) + " )"
        return "( " + s + " ] )"

    with open(path, "w", encoding="utf-8") as f:
        for source, target in examples:
            f.write(f"{target}\t{with_parens(parse(source.split()))}\n")


def _label(text: str, where: str) -> int:
    if text.strip() not in DIGITS:
        raise ValueError(f"{where}: label {text!r} is not a class; expected one digit 0-9")
    return int(text)


def _check(tree: Tree, label: int, where: str) -> None:
    if evaluate(tree) != label:
        raise ValueError(f"{where}: label {label} but the expression evaluates to "
                         f"{evaluate(tree)}; the file is corrupt (or pass check_labels=False)")


def read_lra_tsv(path: str | os.PathLike, check_labels: bool = True) -> list[tuple[list[str], int]]:
    """LRA TSV -> [(tokens without parentheses, label)]."""
    return _read_tsv(path, check_labels, lra=True)


def read_original_tsv(path: str | os.PathLike, check_labels: bool = True) -> list[tuple[list[str], int]]:
    """Original ListOps (`label<TAB>expression`) -> [(tokens without parentheses, label)]."""
    return _read_tsv(path, check_labels, lra=False)


def _read_tsv(path, check_labels: bool, lra: bool) -> list[tuple[list[str], int]]:
    """LRA: a `Source<TAB>Target` header, then `expression<TAB>label` lines; the original
    format: `label<TAB>expression` lines with balanced parentheses."""
    path = Path(path)
    out = []
    with reading(path, "a UTF-8 text file"), open(path, encoding="utf-8") as f:
        if lra:
            header = f.readline().rstrip("\r\n")
            if header.split("\t") != ["Source", "Target"]:
                raise ValueError(f"{path} line 1: header {header[:60]!r}; expected 'Source<TAB>Target' "
                                 "(LRA's ListOps TSV format)")
        for n, line in enumerate(f, start=2 if lra else 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{path} line {n}"
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(f"{where}: {len(fields)} tab-separated fields; expected 2 " +
                                 ("(expression, label)" if lra else
                                  "(label, expression) in the original ListOps format"))
            expression, label = fields if lra else fields[::-1]
            label = _label(label, where)
            raw = expression.split()
            if not lra and raw.count("(") != raw.count(")"):
                raise ValueError(f"{where}: {raw.count('(')} '(' but {raw.count(')')} ')'; "
                                 "expected balanced parentheses")
            tokens = [t for t in raw if t not in _PARENS]
            tree = parse(tokens, where)
            if check_labels:
                _check(tree, label, where)
            out.append((tokens, label))
    return out


def generated_files(spec: ListOpsSpec, root: str | os.PathLike) -> Path:
    """Generate `spec` once into `root/listops-<digest>/` as LRA TSV files (with the spec beside
    them) and return that folder; later calls reuse it."""
    folder = Path(root) / f"listops-{spec.digest()}"
    if not all((folder / name).is_file() for name in LRA_FILES.values()):
        folder.mkdir(parents=True, exist_ok=True)
        splits = generate(spec)
        (folder / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
        for split, name in LRA_FILES.items():
            write_lra_tsv(folder / name, splits[split])
    return folder
