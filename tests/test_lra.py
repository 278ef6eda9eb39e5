"""The lra task: shards and length buckets, real data folders, learning in one process and through the
parameter server, weights carried from one model to the other."""
from __future__ import annotations

import pytest
import torch

from qa_tasks.listops import dataset as listops
from qa_tasks.listops.lra import LRA, load_weights
from qa_tasks.plain import save_weights


# ---- the task -----------------------------------------------------------------------------------

TINY = dict(data="generated", min_length=5, max_length=30, max_depth=4, max_args=4,
            n_train=400, n_valid=100, n_test=50, batch=16, d_model=32, n_heads=2, n_layers=2,
            d_ff=64, fourier_layers="1")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.timeout(60)
def test_shards_are_disjoint_and_cover_the_epoch(cache):
    task = LRA(**TINY)

    def rows(learner, seed):  # examples without their batch's padding
        return [tuple(t for t in r if t != listops.PAD)
                for ids, _ in task.batches(learner, 3, seed) for r in ids.tolist()]

    shards = [rows(i, seed=5) for i in range(3)]
    assert sum(map(len, shards)) == 400 == len(set().union(*shards))  # disjoint, all distinct
    assert rows(0, 5) != rows(0, 6) and sorted(rows(0, 5)) == sorted(rows(0, 6))  # seed shuffles
    assert list((cache / "gadei" / "lra").glob("listops-*/basic_train.tsv"))  # cached, not in the repo


@pytest.mark.timeout(60)
def test_batches_hold_similar_lengths(cache):
    """Length bucketing: far less padding than batches of random lengths, and the batch order
    still changes with the seed (TINY: lengths 5..30, 400 examples, batches of 16)."""
    task = LRA(**TINY)
    batches = [ids for ids, _ in task.batches(0, 1, seed=1)]
    real = sum(int((ids != listops.PAD).sum()) for ids in batches)
    padded = sum(ids.numel() for ids in batches)
    assert padded < 1.1 * real, f"{padded / real:.2f}x padding"
    assert [len(b[0]) for b in batches] != [len(b[0]) for b, _ in task.batches(0, 1, seed=2)]


@pytest.mark.timeout(60)
def test_real_data_folder_is_read_and_missing_folder_explained(tmp_path, cache):
    folder = tmp_path / "data" / "listops"
    folder.mkdir(parents=True)
    rows = listops.generate(listops.ListOpsSpec(min_length=5, max_length=30, n_train=20, n_valid=5, n_test=5))
    for split, name in listops.LRA_FILES.items():
        listops.write_lra_tsv(folder / name, rows[split])
    task = LRA(data="real", data_dir=str(tmp_path / "data"), max_length=30, d_model=16, n_heads=2, d_ff=32)
    metrics = task.evaluate(task.build_model(), "test")
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    with pytest.raises(FileNotFoundError, match="must hold listops/"):
        LRA(data="real", data_dir=str(tmp_path)).evaluate(task.build_model(), "valid")
    with pytest.raises(ValueError, match="model must be"):
        LRA(model="fnet")


@pytest.mark.timeout(180)
def test_short_training_lowers_the_loss_and_weights_carry_over(tmp_path, cache):
    torch.manual_seed(0)
    task = LRA(**TINY, model="transformer")
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    before = task.evaluate(model, "valid")["loss"]
    for epoch in range(6):
        for batch in task.batches(0, 1, seed=epoch):
            opt.zero_grad()
            task.loss(model, batch).backward()
            opt.step()
    after = task.evaluate(model, "valid")["loss"]
    assert after < before - 0.2, f"valid loss {before:.3f} -> {after:.3f}: training did not learn"
    # the trained weights start a Fourier Transformer through --init-from
    save_weights(model, tmp_path / "t.npz")
    fourier = LRA(**TINY, model="fourier", init_from=str(tmp_path / "t.npz")).build_model()
    assert set(load_weights(tmp_path / "t.npz")) == set(fourier.state_dict())
    torch.testing.assert_close(fourier.state_dict()["head.weight"], model.state_dict()["head.weight"])


@pytest.mark.timeout(180)
def test_gadei_trains_the_task_and_its_checkpoint_starts_a_fourier_model(tmp_path, cache):
    import gadei

    options = {**TINY, "model": "transformer"}
    summary = gadei.train("lra", task_options=options, optimizer="adam", learners=2, steps=30,
                          out=tmp_path / "run", lr=3e-3)
    assert summary["updates_applied"] == 30
    assert 0.0 <= summary["final_metrics"]["accuracy"] <= 1.0
    trained = load_weights(tmp_path / "run")                         # through gadei.checkpoint
    task = LRA(**{**options, "model": "fourier"}, init_from=str(tmp_path / "run"))
    fourier = task.build_model()
    for name, value in fourier.state_dict().items():
        torch.testing.assert_close(value, trained[name])
    assert task.evaluate(fourier, "valid")["loss"] > 0
