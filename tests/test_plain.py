"""qa_tasks.plain: the single-process reference loop the results pages' tuning tables come from."""
import json

import numpy as np
import pytest
import torch

from gadei import task as T
from algorithms.schedules import schedule
from qa_tasks import plain
from qa_tasks.listops import lra


@pytest.mark.timeout(120)
def test_epochs_evaluate_after_each_and_follow_the_ps_schedule(monkeypatch):
    task = T.build("nlc", dict(data="generated"))
    seen = []
    step = torch.optim.Adam.step

    def recording_step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    _, record = plain.train(task, epochs=3, lr=3e-3, lr_schedule="cosine", log=lambda line: None)
    per_epoch = sum(1 for _ in task.batches(0, 1, 0))
    assert record["steps"] == len(seen) == 3 * per_epoch
    assert [e["epoch"] for e in record["evaluations"]] == [1, 2, 3]
    assert [e["step"] for e in record["evaluations"]] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    rate = schedule("cosine", 3e-3, len(seen))
    assert seen == pytest.approx([rate(t) for t in range(len(seen))])
    assert record["evaluations"][-1]["train_loss"] < record["evaluations"][0]["train_loss"]
    assert record["final"]["valid"] == record["evaluations"][-1]["valid"]


@pytest.mark.timeout(120)
def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    def run(seed):
        _, record = plain.train(T.build("qc", dict(data="generated")), steps=12, seed=seed, eval_every=6,
                                log=lambda line: None)
        assert set(record["final"]) == {"test"}          # qc's eval_split
        return [e["train_loss"] for e in record["evaluations"]]

    assert run(0) == run(0)
    assert run(0) != run(1)


@pytest.mark.timeout(120)
def test_eval_every_zero_evaluates_nothing_and_keeps_every_loss(monkeypatch):
    task = T.build("qc", dict(data="generated"))
    monkeypatch.setattr(task, "evaluate", lambda *a: pytest.fail("evaluated"))
    _, record = plain.train(task, steps=5, eval_every=0, splits=(), log=lambda line: None)
    assert record["evaluations"] == [] and record["final"] == {} and len(record["losses"]) == 5


@pytest.mark.timeout(120)
def test_command_line_takes_task_options_and_writes_json_and_weights(tmp_path, capsys):
    out = tmp_path / "run.json"
    record = plain.main(["nlc", "--data", "generated", "--model", "cnn", "--steps", "8", "--eval-every", "4",
                         "--json", str(out), "--save", str(tmp_path / "w.npz")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("step") for line in lines[:-1]] == [4, 8] and "final" in lines[-1]
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["settings"]["model"] == "cnn" and record["settings"]["steps"] == 8
    assert set(record["final"]) == {"valid"}
    with np.load(tmp_path / "w.npz", allow_pickle=False) as f:
        assert "embed.weight" in f.files and "convs.0.weight" in f.files
    with pytest.raises(SystemExit):           # not an nlc option
        plain.main(["nlc", "--data", "generated", "--no-such-option", "1"])
    with pytest.raises(SystemExit):           # not a number
        plain.main(["nlc", "--data", "generated", "--penalty", "high"])
    assert plain.parser("qc").parse_args(["--fine", "false"]).fine is False   # a bool, read as gadei does
    assert plain.parser("qc").parse_args(["--fine", "yes"]).fine is True


@pytest.mark.timeout(120)
def test_lra_module_runs_the_same_loop_on_valid_and_test(tmp_path, monkeypatch):
    monkeypatch.setenv("GADEI_CACHE", str(tmp_path / "cache"))
    record = lra.main(["--data", "generated", "--n-train", "64", "--n-valid", "16", "--n-test", "16",
                       "--steps", "4", "--save", str(tmp_path / "t.npz")])
    assert set(record["final"]) == {"valid", "test"} and record["steps"] == 4
    assert set(lra.load_weights(tmp_path / "t.npz")) == set(T.build("lra").build_model().state_dict())
