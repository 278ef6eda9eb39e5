"""qa_tasks/text_classification/clinc.py: reading the CLINC150 file."""
from __future__ import annotations

import pytest
import torch

from qa_tasks.text_classification.clinc import read_clinc
from qa_tasks.text_classification.nlc import NLC
from tests.text_files import CLINC, write_clinc


# -- CLINC150 -----------------------------------------------------------------------------------
def test_read_clinc_withheld_and_full_release(tmp_path):
    splits = read_clinc(write_clinc(tmp_path) / "clinc150" / "data_full.json.gz")
    assert sorted(splits) == ["oos_train", "oos_val", "train", "val"]
    assert splits["train"][0] == ("what is my balance", "balance")
    full = dict(CLINC, test=[["balance please", "balance"]], oos_test=[["sing a song", "oos"]])
    task = NLC(data="real", data_dir=str(write_clinc(tmp_path / "full", full)))
    assert task.split_names() == ["train", "valid", "test"]
    assert task.texts("test") == ["balance please", "sing a song"]
    torch.manual_seed(0)
    metrics = task.evaluate(task.build_model(), "test")
    assert set(metrics) == {"in_scope_accuracy", "oos_recall", "accuracy", "oos_cutoff"}


@pytest.mark.parametrize("data, message", [
    ({k: v for k, v in CLINC.items() if k != "oos_val"}, "missing split"),
    (dict(CLINC, train=[["ok", "balance"], ["no intent"]]), r"split 'train' record 1: expected \[utterance, intent\]"),
    (dict(CLINC, val={"a": 1}), "split 'val' must be a list"),
    (dict(CLINC, oos_val=[["what", "balance"]]), "split 'oos_val' record 0: intent must be 'oos'"),
    (dict(CLINC, test=[["balance please", "balance"]]), "has test but not the other"),
    ([1, 2], "expected a JSON object"),
])
def test_read_clinc_malformed(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        read_clinc(write_clinc(tmp_path, data) / "clinc150" / "data_full.json.gz")


def test_read_clinc_not_json(tmp_path):
    with pytest.raises(ValueError, match="not a .*JSON file"):
        read_clinc(write_clinc(tmp_path, raw=b"{not json") / "clinc150" / "data_full.json.gz")
