"""The asr task: evaluation sets and decoding, error rates, options, shards, learning in one
process and through the parameter server."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qa_tasks.speech import fsdd
from qa_tasks.speech.asr import ASR, error_rates
from tests.speech_files import TINY, write_recordings


@pytest.fixture
def recordings_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    return write_recordings(tmp_path / "recordings")


@pytest.mark.timeout(60)
def test_eval_rounds_join_the_same_recordings_again_differently(recordings_dir):
    one = ASR(data="real", data_dir=str(recordings_dir), **TINY).eval_set("test")
    three = ASR(data="real", data_dir=str(recordings_dir), eval_rounds=3, **TINY).eval_set("test")
    assert three[1][:len(one[1])] == one[1]                       # round 0 unchanged
    assert all(torch.equal(a, b) for a, b in zip(one[0], three[0]))
    digits = lambda utts: sorted(d for u in utts for d in u)
    assert digits(three[1]) == sorted(3 * digits(one[1]))                # each recording 3 times
    assert three[1][len(one[1]):] != 2 * one[1]                  # other groupings


@pytest.mark.timeout(60)
def test_evaluate_decodes_the_same_in_batches_as_one_at_a_time():
    task = ASR(data="generated", speakers="gen0", max_digits=3, **TINY)
    torch.manual_seed(3)
    model = task.build_model()
    runs = []
    for eval_batch in (1, 4):
        task.eval_batch = eval_batch
        runs.append(task.transcribe(model, "test", 0.5))
    assert runs[0]["hyps"] == runs[1]["hyps"] and runs[0]["refs"] == runs[1]["refs"]
    assert runs[0]["skipped"] == runs[1]["skipped"] and runs[0]["frames"] == runs[1]["frames"]
    assert len(runs[0]["ms"]) == len(runs[0]["refs"]) and len(runs[1]["ms"]) == -(-len(runs[1]["refs"]) // 4)


# -- task --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_error_rates():
    wer, cer = error_rates([[1, 2, 3], [4]], [[1, 3], [4, 4]])
    assert wer == pytest.approx(2 / 4)
    # spelled out: "one two three" -> "one three" drops 4 chars of 13; "four" -> "four four" adds 5 of 4
    assert cer == pytest.approx((4 + 5) / (13 + 4))
    assert error_rates([[5]], [[5]]) == (0.0, 0.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("options, message", [
    (dict(data="fake"), "data must be"),
    (dict(batch=0), "batch sizes must be >= 1"),
    (dict(eval_batch=0), "batch sizes must be >= 1"),
    (dict(eval_rounds=0), "eval_rounds must be >= 1"),
    (dict(inter_ctc_weight=1.0), r"inter_ctc_weight must be in \[0, 1\)"),
    (dict(inter_ctc_weight=0.0, distill_weight=0.0), "would never be trained"),
    (dict(inter_layer=6), "inter_layer must be in 1..layers-1"),
    (dict(d_model=30, heads=4), "multiple of heads"),
    (dict(spike_extension=-1), "spike_extension"),
])
def test_asr_bad_options_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        ASR(**{"data": "generated", **options})


@pytest.mark.timeout(60)
def test_shards_are_disjoint_and_batches_deterministic(recordings_dir):
    task = ASR(data="real", data_dir=str(recordings_dir), batch=4, **TINY)
    shards = [[b["targets"].tolist() for b in task.batches(i, 2, seed=3)] for i in range(2)]
    assert shards[0] == [b["targets"].tolist() for b in task.batches(0, 2, seed=3)]
    digits = lambda batches: sorted(d for b in batches for row in b for d in row if d)
    assert sorted(digits(shards[0]) + digits(shards[1])) == sorted(r.digit + 1 for r in fsdd.select(task.recordings, "train"))
    batch = next(iter(task.batches(0, 1, seed=0)))
    assert batch["feats"].shape[0] == task.batch_size(batch) == 4 and batch["feats"].shape[2] == 40


@pytest.mark.timeout(120)
def test_training_loss_falls_and_evaluate_reports(tmp_path):
    """A few dozen Adam steps on two generated batches: the loss must drop well below the
    all-blank plateau, and evaluate must report every metric."""
    task = ASR(data="generated", batch=8, speakers="gen0", max_digits=3, **TINY)
    torch.manual_seed(0)
    model = task.build_model()
    batches = list(task.batches(0, 1, seed=0))[:2]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(100):
        loss = task.loss(model, batches[step % 2])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.5 * first and last < 1.5, (first, last)
    metrics = task.evaluate(model, "test")
    assert set(metrics) >= {"wer", "cer", "skipped_fraction", "encoder_ms_per_utt"}
    assert 0 <= metrics["skipped_fraction"] <= 0.5 and metrics["encoder_ms_per_utt"] > 0


@pytest.mark.timeout(300)
def test_asr_trains_through_gadei_with_two_learners(tmp_path):
    """The same task through the shared-memory PS: 2 learner processes, Adam on the server; the
    checkpoint's weights, loaded by name without pickle, give the summary's metrics."""
    gadei = pytest.importorskip("gadei")
    from gadei import checkpoint
    options = dict(data="generated", batch=8, speakers="gen0", max_digits=3, **TINY)
    task = ASR(**options)
    torch.manual_seed(0)
    batch = next(iter(task.batches(0, 1, seed=99)))
    with torch.no_grad():
        before = float(task.loss(task.build_model().eval(), batch))
    summary = gadei.train("asr", task_options=options, optimizer="adam", learners=2, steps=80,
                          out=tmp_path / "run", lr=3e-3)
    assert summary["updates_applied"] == 80
    model = task.build_model()
    weights = checkpoint.load(tmp_path / "run")["weights"]
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    with torch.no_grad():
        after = float(task.loss(model.eval(), batch))
    assert after < 0.5 * before, (before, after)
    metrics = task.evaluate(model, "test")
    assert metrics["wer"] == pytest.approx(summary["final_metrics"]["wer"])
