"""qa_tasks/text_classification/trec.py: reading TREC files."""
from __future__ import annotations

import pytest

from qa_tasks.text_classification.trec import read_trec
from tests.text_files import TREC_TRAIN, write_trec


# -- TREC ---------------------------------------------------------------------------------------
def test_read_trec_handles_latin1_and_utf8(tmp_path):
    rows = read_trec(write_trec(tmp_path) / "trec" / "train_5500.label")
    assert len(rows) == len(TREC_TRAIN)
    assert rows[0] == ("DESC", "DESC:manner", "How did serfdom develop in and then leave Russia ?")
    assert rows[2][2] == "Which city has the oldest relationship as a sister\xf0city with Los Angeles ?"
    assert rows[3][2] == "Who was Jos\u00e9 Mart\u00ed ?"


@pytest.mark.parametrize("line, message", [
    (b"DESC:manner", r"train_5500.label:3: expected 'COARSE:fine question'"),
    (b"How did serfdom develop ?", r"train_5500.label:3: expected"),
    (b"DESC How did serfdom develop ?", r"train_5500.label:3: expected"),
    (b"WHAT:ever Is this a class ?", r"train_5500.label:3: unknown coarse label 'WHAT'"),
])
def test_read_trec_malformed_line_names_file_and_line(tmp_path, line, message):
    root = write_trec(tmp_path, train=TREC_TRAIN[:2] + [line] + TREC_TRAIN[2:])
    with pytest.raises(ValueError, match=message):
        read_trec(root / "trec" / "train_5500.label")
