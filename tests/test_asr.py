"""The asr task: evaluation sets and decoding, error rates, options, shards, learning in one
process and through the parameter server."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from qa_tasks.speech import fsdd
from qa_tasks.speech.asr import ASR, error_rates
from tests.helpers import run_gadei
from tests.speech_files import TINY, write_recordings

# no augmentation: tests that compare features or learn from two fixed batches
PLAIN = dict(speed=0.0, vtlp=0.0, freq_masks=0, time_masks=0.0, gain=0.0)


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
    (dict(train_on="valid"), "train_on must be 'all' or 'train'"),
    (dict(speed=1.0), "speed and tempo must be in"),
    (dict(gain=-1.0), "level and gain must be >= 0"),
    (dict(vtlp=-0.1), "vtlp in"),
    (dict(tempo=1.0), "speed and tempo must be in"),
    (dict(freq_masks=-1), "mask counts and widths"),
    (dict(speakers="gen0,gen1", holdout="gen2"), "outside speakers"),
    (dict(norm="global"), "norm must be 'utterance' or 'speaker'"),
    (dict(cepstra=41), r"cepstra must be in 0..n_mels \(40\)"),
    (dict(warp_search="0.9-1.1"), "warp_search must be 'LO:HI:STEP'"),
    (dict(warp_search="1.1:0.9:0.02"), "need 0.5 < LO <= HI < 1.5 and STEP > 0"),
    (dict(warp_search="0.9:1.1:0"), "need 0.5 < LO <= HI < 1.5 and STEP > 0"),
    (dict(warp_search="0.9:1.1:0.001"), "use at most 100"),
    (dict(warp_search="0.9:1.1:0.1", warp_ensemble=4), r"warp_ensemble must be in 1..3"),
    (dict(warp_ensemble=2), r"warp_ensemble must be in 1..1"),
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
    # train_on="all" (the default): every recording trains
    assert sorted(digits(shards[0]) + digits(shards[1])) == sorted(r.digit + 1 for r in task.recordings)
    batch = next(iter(task.batches(0, 1, seed=0)))
    assert batch["feats"].shape[0] == task.batch_size(batch) == 4 and batch["feats"].shape[2] == task.cepstra == 13


@pytest.mark.timeout(300)          # 107 s measured at load average 11
def test_training_loss_falls_and_evaluate_reports(tmp_path):
    """A few dozen Adam steps on two generated batches: the loss must drop well below the
    all-blank plateau, and evaluate must report every metric."""
    task = ASR(data="generated", batch=8, speakers="gen0", max_digits=3, **TINY, **PLAIN)
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
        losses.append(loss.item())
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


# -- speakers held out, every recording of a folder, augmentation ---------------------------------


@pytest.mark.timeout(60)
def test_holdout_and_train_on_choose_the_recordings(recordings_dir):
    key = lambda recs: sorted((r.speaker, r.digit, r.index) for r in recs)
    every = ASR(data="real", data_dir=str(recordings_dir), **TINY)
    assert every.eval_split == "test"
    assert key(every.split_recordings("train")) == key(every.recordings) == key(every.split_recordings("all"))
    indices = ASR(data="real", data_dir=str(recordings_dir), train_on="train", **TINY)
    assert {r.index for r in indices.split_recordings("train")} == {10, 11}
    held = ASR(data="real", data_dir=str(recordings_dir), holdout="bob", **TINY)
    assert held.eval_split == "heldout"
    assert {r.speaker for r in held.split_recordings("train")} == {"ann"} and len(held.split_recordings("train")) == 120
    assert {(r.speaker, r.index) for r in held.split_recordings("heldout")} == {("bob", i) for i in range(12)}
    assert {r.speaker for r in held.split_recordings("test")} == {"ann"}
    train_digits = sorted(d - 1 for b in held.batches(0, 1, seed=0) for row in b["targets"].tolist() for d in row if d)
    assert train_digits == sorted(r.digit for r in held.split_recordings("train"))
    with pytest.raises(ValueError, match="holdout speaker.*cid not in the data.*holds ann, bob"):
        ASR(data="real", data_dir=str(recordings_dir), holdout="cid", **TINY).split_recordings("train")
    with pytest.raises(ValueError, match="split 'heldout' needs the holdout option"):
        every.eval_set("heldout")
    with pytest.raises(ValueError, match="no split 'dev'.*train, valid, test, all, heldout"):
        every.eval_set("dev")


@pytest.mark.timeout(60)
def test_heldout_speaker_scores_as_its_own_folder_does(recordings_dir, tmp_path):
    """Split 'heldout' of a speaker held out of training is split 'all' of a folder of only
    that speaker: every recording, joined into the same utterances."""
    held = ASR(data="real", data_dir=str(recordings_dir), holdout="bob", **TINY).eval_set("heldout")
    alone = ASR(data="real", data_dir=str(write_recordings(tmp_path / "bob", ("bob",))), **TINY).eval_set("all")
    assert held[1] == alone[1] and sorted(d for u in alone[1] for d in u) == sorted(list(range(10)) * 12)
    assert all(torch.equal(a, b) for a, b in zip(held[0], alone[0]))


@pytest.mark.timeout(60)
def test_augmentation_is_seeded_and_off_means_the_plain_features(recordings_dir):
    batches = lambda **o: list(ASR(data="real", data_dir=str(recordings_dir), batch=4, **TINY, **o).batches(0, 1, seed=2))
    plain, again = batches(**PLAIN), batches()
    aug = batches()
    assert [b["targets"].tolist() for b in plain] == [b["targets"].tolist() for b in aug]   # same utterances
    assert all(torch.equal(a["feats"], b["feats"]) for a, b in zip(aug, again))            # seeded
    task = ASR(data="real", data_dir=str(recordings_dir), batch=4, **TINY, **PLAIN)
    utts = fsdd.join(task.split_recordings("train"), [0, 2, 0], task.max_digits, noise=task.noise, level=task.level)
    order = np.random.default_rng([2, 0]).permutation(len(utts))
    first = [task.features(utts)[j] for j in order[:4]]
    assert all(torch.equal(f, plain[0]["feats"][i, :len(f)]) for i, f in enumerate(first))
    # augmented: other values; speed perturbation changes the lengths
    assert not torch.equal(plain[0]["feats"], aug[0]["feats"])
    assert plain[0]["lens"].tolist() != aug[0]["lens"].tolist()


@pytest.mark.timeout(300)
def test_eval_split_all_scores_every_recording_of_an_unseen_speakers_folder(recordings_dir, tmp_path):
    """Trained with speaker bob held out (the job's evaluation is on bob, every recording), then
    `gadei eval --split all --data-dir X` on a folder of a third speaker it never heard."""
    out = tmp_path / "run"
    r = run_gadei("train", "--task", "asr", "--data-dir", recordings_dir, "--holdout", "bob", "--learners", "2",
                  "--steps", "6", "--optimizer", "adam", "--lr", "3e-3", "--out", out, "--no-progress",
                  *[str(x) for k, v in TINY.items() for x in (f"--{k.replace('_', '-')}", v)])
    assert r.returncode == 0, r.stderr
    final = json.loads((out / "summary.json").read_text())["final_metrics"]
    assert final["digits"] == 120                          # bob: 10 digits x 12 indices
    cid = write_recordings(tmp_path / "cid", ("cid",))
    r = run_gadei("eval", "--task", "asr", "--checkpoint", out, "--split", "all", "--data-dir", cid)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics["digits"] == 120 and 0 <= metrics["wer"] and metrics["utterances"] >= 120 / 7
    r = run_gadei("eval", "--task", "asr", "--checkpoint", out, "--split", "all", "--data-dir", cid,
                  "--warp-search", "0.9:1.1:0.1")              # test-time VTLN: cid's warp is reported
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["warp_cid"] in (0.9, 1.0, 1.1)
    r = run_gadei("eval", "--task", "asr", "--checkpoint", out, "--split", "test", "--data-dir", cid)
    assert r.returncode != 0 and "use --split all" in r.stderr


@pytest.mark.timeout(120)
def test_speaker_norm_and_cepstra_shape_the_features(recordings_dir):
    """norm="speaker" normalises over all of a speaker's utterances in the set scored (each
    speaker's frames together: mean 0, variance 1), cepstra=K gives K features, in evaluation
    and in training batches alike, and the model takes them."""
    task = ASR(data="real", data_dir=str(recordings_dir), norm="speaker", cepstra=13, batch=4, **TINY)
    feats, _ = task.eval_set("test")
    utts = task.utterances("test", [task.seed, fsdd.SPLITS.index("test")])
    assert [len(f) for f in feats] == [fsdd.n_frames(len(u.audio)) for u in utts]
    for speaker in ("ann", "bob"):
        frames = torch.cat([f for f, u in zip(feats, utts) if u.speaker == speaker])
        assert frames.shape[1] == 13
        torch.testing.assert_close(frames.mean(0), torch.zeros(13), atol=1e-4, rtol=0)
        torch.testing.assert_close(frames.std(0, correction=0), torch.ones(13), atol=1e-3, rtol=0)
    assert max(abs(float(f.mean(0).abs().max())) for f in feats) > 0.05    # not per utterance
    batch = next(iter(task.batches(0, 1, seed=0)))
    assert batch["feats"].shape[2] == 13
    lp, out_lens = task.build_model().full(batch["feats"], batch["lens"])
    assert lp.shape[2] == 11 and torch.isfinite(lp).all()
    # per utterance: each utterance on its own
    plain = ASR(data="real", data_dir=str(recordings_dir), norm="utterance", **TINY).eval_set("test")[0]
    assert all(abs(float(f.mean(0).abs().max())) < 1e-4 for f in plain)


# -- test-time vocal-tract-length normalisation (warp_search) ----------------------------------


@pytest.mark.timeout(60)
def test_warp_grid_and_the_identity_warp_is_the_plain_features(recordings_dir):
    from qa_tasks.speech.asr import warp_grid
    grid = warp_grid("0.86:1.14:0.02")
    assert len(grid) == 15 and grid[0] == 0.86 and grid[-1] == 1.14 and 1.0 in grid
    assert warp_grid("") == [] and warp_grid("1:1:0.05") == [1.0]
    plain = ASR(data="real", data_dir=str(recordings_dir), **TINY)
    searched = ASR(data="real", data_dir=str(recordings_dir), warp_search="0.9:1.1:0.05", **TINY)
    a, b = plain.eval_set("test"), searched.eval_set("test", 1.0)
    assert a[1] == b[1] and all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    warped = searched.eval_set("test", 1.1)[0]
    assert [len(f) for f in warped] == [len(f) for f in a[0]] and not torch.equal(warped[0], a[0][0])
    # a grid of 1 alone decodes exactly as no search
    torch.manual_seed(0)
    model = plain.build_model()
    only_one = ASR(data="real", data_dir=str(recordings_dir), warp_search="1:1:0.1", **TINY)
    assert only_one.transcribe(model, "test", 1.0)["hyps"] == plain.transcribe(model, "test", 1.0)["hyps"]


@pytest.mark.timeout(300)
def test_warp_search_finds_the_warp_of_a_speaker_with_higher_formants():
    """Trained on gen0 alone, the model meets gen2, whose generated formants are 1.12 times
    gen0's: without labels the search must pick a warp near 1.12 for gen2 and near 1 for gen0,
    and decoding gen2 at it must err much less than with the plain filters."""
    task = ASR(data="generated", batch=8, speakers="gen0,gen2", holdout="gen2", max_digits=3,
               warp_search="0.88:1.2:0.04", **TINY, **PLAIN)
    torch.manual_seed(0)
    model = task.build_model()
    batches = list(task.batches(0, 1, seed=0))[:4]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(120):
        loss = task.loss(model, batches[step % 4])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert task.search_warps(model, "test")["gen0"][0] in (0.96, 1.0, 1.04)
    held = task.evaluate(model, "heldout")
    assert held["warp_gen2"] in (1.08, 1.12, 1.16) and held["warp_search_cpu_s"] > 0, held
    two = ASR(data="generated", batch=8, speakers="gen0,gen2", holdout="gen2", max_digits=3,
              warp_search="0.88:1.2:0.04", warp_ensemble=2, **TINY, **PLAIN).evaluate(model, "heldout")
    plain = ASR(data="generated", batch=8, speakers="gen0,gen2", holdout="gen2", max_digits=3,
                **TINY, **PLAIN).evaluate(model, "heldout")
    assert "warp_gen2" not in plain
    assert held["wer"] < plain["wer"] - 0.3 and two["wer"] < plain["wer"] - 0.3, (held, two, plain)
