"""The qc task: TREC fixtures, options, learning in one process and through the parameter server."""
from __future__ import annotations

from statistics import mean

import pytest
import torch

from gadei import task as T
from qa_tasks.text_classification.qc import QC
from qa_tasks.text_classification.trec import COARSE
from qa_tasks.text_classification.text import tokenize
from tests.helpers import plain_train
from tests.text_files import write_trec


def test_qc_on_fixture_files(tmp_path):
    task = QC(data="real", data_dir=str(write_trec(tmp_path)), valid_fraction=0.2, min_count=1)
    assert task.eval_split == "test"
    assert [len(task.texts(s)) for s in ("train", "valid", "test")] == [8, 2, 2]
    assert task.label_names == list(COARSE)
    # the held-out part is fixed: the same in a second instance (another process)
    again = QC(data="real", data_dir=str(tmp_path), valid_fraction=0.2, min_count=1)
    assert again.texts("valid") == task.texts("valid") and again.vocab.itos == task.vocab.itos
    # the vocabulary comes from the training split only
    train_words = set(tokenize(" ".join(task.texts("train"))))
    assert set(task.vocab.itos[2:]) == train_words
    assert "aspen" not in task.vocab.stoi  # a test-only word
    torch.manual_seed(0)
    metrics = task.evaluate(task.build_model(), "test")
    assert set(metrics) == {"accuracy", "loss"} and 0.0 <= metrics["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="no split 'dev'"):
        task.evaluate(task.build_model(), "dev")


def test_qc_fine_labels_unknown_in_training_are_an_error(tmp_path):
    task = QC(data="real", data_dir=str(write_trec(tmp_path)), fine=True, valid_fraction=0.0)
    with pytest.raises(ValueError, match=r"labels the training split lacks: \['NUM:dist'\]"):
        task.build_model()
    write_trec(tmp_path, test=[b"NUM:date When was Gandhi born ?"])
    task = QC(data="real", data_dir=str(tmp_path), fine=True, valid_fraction=0.0)
    assert "LOC:city" in task.label_names and task.build_model().out.out_features == len(task.label_names)


def test_qc_options_validate_and_missing_data_is_explained(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="widths must be comma-separated"):
        QC(widths="3;4")
    with pytest.raises(ValueError, match="valid_fraction"):
        QC(valid_fraction=1.0)
    with pytest.raises(ValueError, match="has no option"):
        T.build("qc", dict(batch_size=3))
    with pytest.raises(FileNotFoundError, match="trec/"):
        QC(data="real", data_dir=str(tmp_path)).build_model()
    monkeypatch.delenv("GADEI_DATA", raising=False)
    assert not QC().real  # auto without a data directory: generated


@pytest.mark.timeout(60)
def test_qc_generated_learns():
    task = QC(data="generated", embed_dim=32, filters=16, batch=32)
    batches = list(task.batches(1, 2, seed=3))
    assert sum(task.batch_size(b) for b in batches) == len(task.texts("train")) // 2
    losses, model = plain_train(task, steps=60)
    assert mean(losses[-10:]) < 0.5 * mean(losses[:10])
    assert task.evaluate(model, "test")["accuracy"] > 0.8


@pytest.mark.timeout(120)
def test_qc_trains_through_gadei_with_two_learners(tmp_path):
    """The same task through the shared-memory PS: 2 learner processes, Adam on the server."""
    gadei = pytest.importorskip("gadei")
    from gadei import checkpoint
    options = dict(data="generated", embed_dim=32, filters=16, batch=32)
    task = QC(**options)
    torch.manual_seed(0)
    before = task.evaluate(task.build_model(), "test")
    summary = gadei.train("qc", task_options=options, optimizer="adam", learners=2, steps=60,
                          out=tmp_path / "run", lr=5e-3)
    after = summary["final_metrics"]
    assert summary["updates_applied"] == 60
    assert summary["restarts"] == {"ps": 0, "learners": 0}, "a process crashed: see the logs/ under out"
    assert after["loss"] < 0.5 * before["loss"] and after["accuracy"] > 0.8
    # the checkpoint holds the model's weights under its parameter names, loadable without pickle
    model = task.build_model()
    weights = checkpoint.load(tmp_path / "run")["weights"]
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    assert task.evaluate(model, "test")["accuracy"] == pytest.approx(after["accuracy"])
