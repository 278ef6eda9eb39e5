"""The training CSV and the metadata of an upload: parse, validate, say exactly what is wrong.

A training file is UTF-8 (a leading byte-order mark is allowed), no header, one example a row:
`text,class`. A text holding a comma, a quote or a line break is quoted as CSV quotes it
(`"Is it cold, or wet?",weather`, a quote inside doubled). Blank lines are skipped. Every
problem is a `CsvError` whose message names the line and what is wrong, so the service can
answer 400 with it; nothing else is raised for any input (tests/test_serve_csv.py).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

MAX_ROWS = 20_000
MIN_ROWS = 5
MAX_CLASSES = 3_000
MIN_CLASSES = 2
MAX_TEXT = 1_024          # characters of one text (training and classify alike)
MAX_CLASS_NAME = 128      # characters of one class name
LANGUAGES = ("en",)       # the tokenizer (qa_tasks/text_classification/text.py) splits on ASCII letters and digits


class CsvError(ValueError):
    """The upload is not a valid training set; the message says where and why."""


@dataclass(frozen=True)
class TrainingSet:
    rows: list[tuple[str, str]]    # (text, class) in file order

    @property
    def classes(self) -> list[str]:
        return sorted({c for _, c in self.rows})

    def to_csv(self) -> str:
        """The rows re-written by the csv module: what the training task reads. The line end
        is \r\n because the writer quotes a field holding a character of its line terminator:
        with "\n" alone, a text holding "\r" would be written unquoted and read back split."""
        out = io.StringIO()
        csv.writer(out, lineterminator="\r\n").writerows(self.rows)
        return out.getvalue()


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CsvError(f"line {line}: byte 0x{data[e.start]:02x} is not UTF-8; save the file as "
                       "UTF-8") from None


def _has_control(s: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in s)


def parse_training_csv(data: bytes) -> TrainingSet:
    """Parse and validate a training file (see the module docstring); raise CsvError."""
    reader = csv.reader(io.StringIO(_decode(data), newline=""), strict=True)
    rows: list[tuple[str, str]] = []
    try:
        for row in reader:
            line = reader.line_num
            if not row:
                continue                     # a blank line
            if len(row) != 2:
                raise CsvError(f"line {line}: expected 2 columns (text,class), found {len(row)}; "
                               "quote a text that holds a comma")
            text, label = row[0].strip(), row[1].strip()
            if not text:
                raise CsvError(f"line {line}: the text is empty")
            if len(text) > MAX_TEXT:
                raise CsvError(f"line {line}: the text has {len(text)} characters, more than {MAX_TEXT}")
            if not label:
                raise CsvError(f"line {line}: the class is empty")
            if len(label) > MAX_CLASS_NAME or _has_control(label):
                raise CsvError(f"line {line}: a class name must be 1-{MAX_CLASS_NAME} characters "
                               f"without control characters, not {label[:40]!r}")
            rows.append((text, label))
            if len(rows) > MAX_ROWS:
                raise CsvError(f"too many rows: more than {MAX_ROWS:,} (line {line})")
    except csv.Error as e:
        raise CsvError(f"line {reader.line_num}: not valid CSV ({e})") from None
    if len(rows) < MIN_ROWS:
        raise CsvError(f"too few rows: {len(rows)}, at least {MIN_ROWS} are needed")
    n_classes = len({c for _, c in rows})
    if n_classes < MIN_CLASSES:
        raise CsvError(f"too few classes: {n_classes}, at least {MIN_CLASSES} are needed")
    if n_classes > MAX_CLASSES:
        raise CsvError(f"too many classes: {n_classes:,}, at most {MAX_CLASSES:,}")
    return TrainingSet(rows)


def parse_metadata(data: str | bytes | None) -> dict:
    """`training_metadata`: a JSON object {"name": ..., "language": "en"}; CsvError if not."""
    if data is None or (isinstance(data, (str, bytes)) and not data.strip()):
        raise CsvError('training_metadata is missing: send {"name": "...", "language": "en"}')
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CsvError(f"training_metadata is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CsvError(f"training_metadata must be a JSON object, not {type(meta).__name__}")
    name = meta.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 100 or _has_control(name):
        raise CsvError('training_metadata needs "name": 1-100 characters without control characters')
    language = meta.get("language", "en")
    if language not in LANGUAGES:
        raise CsvError(f"language {language!r} is not supported; use one of {', '.join(LANGUAGES)}")
    unknown = sorted(set(meta) - {"name", "language"})
    if unknown:
        raise CsvError(f"training_metadata has unknown field(s) {', '.join(unknown)}; it takes name, language")
    return {"name": name.strip(), "language": language}
