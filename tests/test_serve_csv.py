"""The training CSV parser and the request validators of `gadei serve`, property-based."""
from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from gadei.serve import csvdata
from gadei.serve.app import ClassifyCollectionRequest, ClassifyRequest
from gadei.serve.csvdata import CsvError, parse_metadata, parse_training_csv

# texts and class names as a customer's file may hold them: any characters but NUL (which no
# CSV reader takes), no surrounding whitespace (the parser strips it), no leading BOM
texts = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=60) \
    .map(str.strip).filter(lambda s: s and not s.startswith("\ufeff"))
class_names = st.text(st.characters(min_codepoint=32, blacklist_characters="\x7f", blacklist_categories=("Cs",)),
                      min_size=1, max_size=20).map(str.strip).filter(bool)


def to_csv(rows) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def valid_rows(n=10):
    return [(f"text number {i}, with a comma", "even" if i % 2 else "odd") for i in range(n)]


@st.composite
def training_sets(draw):
    labels = draw(st.lists(class_names, min_size=2, max_size=6, unique=True))
    rows = [(draw(texts), label) for label in labels]                       # every class once
    rows += draw(st.lists(st.tuples(texts, st.sampled_from(labels)), min_size=max(0, 5 - len(rows)), max_size=20))
    return draw(st.permutations(rows))


@settings(max_examples=200, deadline=None)
@given(training_sets())
def test_what_the_csv_module_writes_parses_back_unchanged(rows):
    parsed = parse_training_csv(to_csv(rows))
    assert parsed.rows == list(rows)
    assert parse_training_csv(parsed.to_csv().encode()).rows == list(rows)   # the stored copy too
    assert parsed.classes == sorted({c for _, c in rows})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_a_training_set_or_a_csv_error(data):
    try:
        parsed = parse_training_csv(data)
    except CsvError as e:
        assert str(e)
    else:
        assert csvdata.MIN_ROWS <= len(parsed.rows) and len(parsed.classes) >= csvdata.MIN_CLASSES


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 9), st.sampled_from([
    ("a,b,c", "expected 2 columns"), ("only one column", "expected 2 columns"),
    ('"  ",spam', "the text is empty"), ("text,", "the class is empty"),
    ("x" * 1025 + ",spam", "more than 1024"), ('"unclosed,spam', "not valid CSV")]))
def test_one_bad_line_is_named_with_its_problem(k, bad):
    line, problem = bad
    rows = to_csv(valid_rows()).decode().splitlines()
    rows.insert(k, line)
    with pytest.raises(CsvError) as e:
        parse_training_csv(("\n".join(rows) + "\n").encode())
    assert problem in str(e.value)
    if "unclosed" not in line:          # an open quote runs to the end of the file
        assert f"line {k + 1}:" in str(e.value)


@pytest.mark.parametrize("data, problem", [
    (to_csv([(f"t{i}", "one") for i in range(10)]), "too few classes: 1"),
    (to_csv(valid_rows(4)), "too few rows: 4"),
    (to_csv([(f"t{i}", f"c{i % 2}") for i in range(20_001)]), "too many rows: more than 20,000"),
    (to_csv([(f"t{i}", f"c{i}") for i in range(3_001)]), "too many classes: 3,001"),
    (to_csv(valid_rows(3)) + b"caf\xe9,drink\n" + to_csv(valid_rows(3)), "line 4: byte 0xe9 is not UTF-8"),
    (b"", "too few rows: 0"),
])
def test_whole_file_problems(data, problem):
    with pytest.raises(CsvError, match=problem):
        parse_training_csv(data)


def test_exactly_the_limits_are_accepted():
    assert len(parse_training_csv(to_csv([(f"t{i}", f"c{i % 2}") for i in range(20_000)])).rows) == 20_000
    assert len(parse_training_csv(to_csv([(f"t{i}", f"c{i}") for i in range(3_000)])).classes) == 3_000
    assert parse_training_csv(to_csv([("x" * 1024, "a"), ("y", "b")] * 3)).rows[0][0] == "x" * 1024


def test_bom_blank_lines_and_crlf_are_accepted():
    lines = [f'"{t}",{c}' for t, c in valid_rows(6)]
    data = b"\xef\xbb\xbf" + ("\r\n\r\n".join(lines) + "\n\n").encode()
    assert parse_training_csv(data).rows == valid_rows(6)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["name", "language", "x"]), inner, max_size=3),
                    max_leaves=6))
def test_metadata_is_a_clean_dict_or_a_csv_error(value):
    try:
        meta = parse_metadata(json.dumps(value))
    except CsvError as e:
        assert str(e)
    else:
        assert set(meta) == {"name", "language"} and meta["name"] and meta["language"] == "en"


@pytest.mark.parametrize("data, problem", [
    (None, "missing"), ("", "missing"), ("{", "not JSON"), ("[]", "JSON object"), ('{"language": "en"}', '"name"'),
    ('{"name": "x", "language": "fr"}', "not supported"), ('{"name": "x", "lang": "en"}', "unknown field"),
])
def test_metadata_problems(data, problem):
    with pytest.raises(CsvError, match=problem):
        parse_metadata(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=1100))
def test_classify_request_takes_texts_of_1_to_1024_characters(text):
    try:
        ClassifyRequest(text=text)
        ok = True
    except ValidationError:
        ok = False
    assert ok == (1 <= len(text) <= csvdata.MAX_TEXT)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 40))
def test_classify_collection_takes_1_to_30_texts(n):
    try:
        ClassifyCollectionRequest(collection=[{"text": "hello"}] * n)
        ok = True
    except ValidationError:
        ok = False
    assert ok == (1 <= n <= 30)
