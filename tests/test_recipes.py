"""Recipes are the defaults (gadei/recipe.py): a task's declared training setting applies where
the user gives no option, an explicit option overrides it, and summary.json says where each
value came from. And what the CLI tells: the listing, the help, each data set's split names,
ListOps in its original format."""
from __future__ import annotations

import json
from typing import ClassVar

import pytest

import gadei
from gadei import recipe as R
from gadei.evaluate import job_of
from gadei.probe import audit
from gadei.train import config
from tests.helpers import run_gadei
from tests.tasks import Blobs

pytestmark = pytest.mark.timeout(300)


class Recipe(Blobs):
    """Blobs with a recipe that has something of every kind."""
    recipe: ClassVar[dict] = {"optimizer": "adam", "lr": 0.01, "beta1": 0.8, "lr_schedule": "cosine",
                              "lr_warmup": 5, "steps": 60}


class EpochRecipe(Blobs):
    recipe: ClassVar[dict] = {"optimizer": "adam", "epochs": 5}


class BadRecipe(Blobs):
    recipe: ClassVar[dict] = {"optimizer": "adam", "momentum": 0.9}


RECIPE = "tests.test_recipes:Recipe"


# ---- the rules, on the resolved configuration (no job runs) --------------------------------------

def test_no_option_is_the_recipe():
    cfg = config(RECIPE, {}, {})
    assert (cfg.optimizer, cfg.lr_schedule, cfg.lr_warmup, cfg.steps, cfg.epochs) == ("adam", "cosine", 5, 60, None)
    assert cfg.hyper == {"lr": 0.01, "beta1": 0.8, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
                         "amsgrad": False, "decoupled_weight_decay": False}     # every value, in the rule's order
    assert {k: cfg.origin[k] for k in ("optimizer", "lr", "beta1", "lr_schedule", "steps", "epochs")} == \
        dict.fromkeys(("optimizer", "lr", "beta1", "lr_schedule", "steps", "epochs"), "recipe")
    assert cfg.origin["seed"] == cfg.origin["beta2"] == cfg.origin["learners"] == "default"
    assert cfg.recipe_dropped == {}


def test_an_explicit_option_overrides_its_key_only():
    cfg = config(RECIPE, {}, {"lr": 0.002, "seed": 3, "optimizer": "adam"})
    assert (cfg.hyper["lr"], cfg.hyper["beta1"], cfg.seed, cfg.lr_schedule) == (0.002, 0.8, 3, "cosine")
    assert cfg.origin["lr"] == cfg.origin["seed"] == cfg.origin["optimizer"] == "argument"
    assert cfg.origin["beta1"] == "recipe"


def test_the_users_budget_replaces_the_recipes():
    cfg = config(RECIPE, {}, {"steps": 40})
    assert (cfg.steps, cfg.epochs, cfg.lr_schedule) == (40, None, "cosine")
    cfg = config(RECIPE, {}, {"epochs": 2})
    assert (cfg.steps, cfg.epochs) == (None, 2)
    assert cfg.origin["steps"] == cfg.origin["epochs"] == "argument"
    # cosine decays over steps: with the user's epochs the recipe's schedule is dropped
    assert cfg.lr_schedule == "constant" and set(cfg.recipe_dropped) == {"steps", "lr_schedule"}


def test_another_optimizer_drops_the_recipes_hyper_parameters_and_schedule():
    cfg = config(RECIPE, {}, {"optimizer": "msgd", "momentum": 0.5})
    assert cfg.optimizer == "msgd" and cfg.hyper == {"lr": 0.001, "momentum": 0.5, "dampening": 0.0,
                                                     "nesterov": False, "weight_decay": 0.0}
    assert (cfg.lr_schedule, cfg.lr_warmup, cfg.steps) == ("constant", 0, 60)    # the budget stays
    assert set(cfg.recipe_dropped) == {"lr", "beta1", "lr_schedule", "lr_warmup"}
    assert cfg.origin["lr"] == "default" and cfg.origin["momentum"] == "argument"
    with pytest.raises(ValueError, match="optimizer 'adam' takes"):        # the recipe's optimizer
        config(RECIPE, {}, {"momentum": 0.5})


def test_a_schedule_with_the_recipes_epochs_and_a_bad_recipe_are_clear_errors():
    with pytest.raises(ValueError, match="recipe trains for 5 epochs: give --steps too"):
        config("tests.test_recipes:EpochRecipe", {}, {"lr_schedule": "cosine"})
    with pytest.raises(ValueError, match="BadRecipe.recipe has momentum"):
        config("tests.test_recipes:BadRecipe", {}, {})


def test_a_task_without_a_recipe_trains_from_the_plain_defaults():
    cfg = config("tests.tasks:Blobs", {}, {})
    assert (cfg.optimizer, cfg.hyper, cfg.steps) == ("sgd", {"lr": 0.001, "weight_decay": 0.0}, 200)
    assert set(cfg.origin.values()) == {"default"}


def test_the_built_in_recipes():
    assert R.of("qc")["optimizer"] == "adam"
    assert R.of("probe") == {"optimizer": "sgd", "lr": 1.0}   # the audit is exact by default
    for name in ("qc", "nlc", "qa", "asr", "lra", "probe", "csv_text"):
        R.of(name)                                              # each one valid


# ---- through the CLI and gadei.train: summary.json records the origins ---------------------------

def test_the_probe_trains_at_lr_1_by_default_and_its_audit_is_exact(tmp_path):
    out = tmp_path / "p"
    r = run_gadei("train", "--task", "probe", "--learners", 1, "--steps", 30, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "probe's recipe: --optimizer sgd --lr 1.0" in r.stdout
    s = json.loads((out / "summary.json").read_text())["settings"]
    assert s["hyper"] == {"lr": 1.0, "weight_decay": 0.0} and s["origin"]["lr"] == "recipe"
    assert s["origin"]["weight_decay"] == "default"
    assert s["origin"]["steps"] == s["origin"]["out"] == "command line" and s["origin"]["seed"] == "default"
    assert audit(out) == []


def test_a_checkpoint_records_every_task_option_so_new_defaults_do_not_change_it(tmp_path):
    out = tmp_path / "p"
    r = run_gadei("train", "--task", "probe", "--learners", 1, "--steps", 4, "--probe-size", 64,
                  "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    want = {"probe_size": 64, "probe_nan_every": 0, "probe_hold": 0.0}
    s = json.loads((out / "summary.json").read_text())["settings"]
    assert s["task_options"] == want
    assert (s["origin"]["task.probe_size"], s["origin"]["task.probe_hold"]) == ("command line", "default")
    cfg, _ = job_of(out / "checkpoint")
    assert cfg.task_options == want      # rebuilt from the recorded values, not today's defaults


def test_gadei_train_records_its_arguments(tmp_path):
    summary = gadei.train(RECIPE, steps=20, beta1=0.7, learners=1, out=tmp_path / "r", progress=False)
    s = summary["settings"]
    assert (s["hyper"]["lr"], s["hyper"]["beta1"], summary["updates_applied"]) == (0.01, 0.7, 20)
    assert (s["origin"]["beta1"], s["origin"]["lr"], s["origin"]["steps"]) == ("argument", "recipe", "argument")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["settings"]["origin"] == s["origin"]


# ---- what the CLI tells -------------------------------------------------------------------------

def test_train_help_names_tasks_optimizers_options_types_and_the_recipe():
    r = run_gadei("train", "--task", "qc", "--help", timeout=120)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())           # argparse wraps lines to the terminal's width
    for want in ("tasks: asr, csv_text, lra, nlc, probe, qa, qc", "optimizers: adadelta", "sgd",
                 "recipe: --optimizer adam --lr 0.001", "--filters INT", "(default: 100)",
                 "--widths TEXT", "--dropout FLOAT", "--fine BOOL", "optimizer 'adam'", "--beta2 FLOAT",
                 "qc's recipe: 0.001", "(default: sgd; qc's recipe: adam)", "another --optimizer drops"):
        assert want in text, want
    r = run_gadei("train", "--task", "qc", "--optimizer", "msgd", "--help", timeout=120)
    assert "optimizer 'msgd'" in r.stdout and "--momentum FLOAT" in r.stdout and "(default: 0.9)" in r.stdout
    assert "recipe: 0.001" not in r.stdout.split("optimizer 'msgd'")[1]      # adam's lr is not msgd's


def test_tasks_lists_each_with_a_line_and_where_it_comes_from():
    r = run_gadei("tasks", timeout=120)
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert {"probe", "qc", "nlc", "qa", "asr", "lra", "csv_text"} <= set(lines)
    assert "TREC question classification" in lines["qc"] and "built in" in lines["qc"]


def test_each_data_sets_own_split_names():
    from qa_tasks.text_classification.nlc import NLC
    from qa_tasks.text_classification.qc import QC
    task = NLC(data="generated", hidden=8, embed_dim=8, attention_dim=8, mlp_hidden=8)
    model = task.build_model()
    assert task.evaluate(model, "val") == task.evaluate(model, "valid")     # CLINC150 calls it val
    with pytest.raises(ValueError, match=r"no split 'dev'; it has train, valid \(or val\), test"):
        task.evaluate(model, "dev")
    qc = QC(data="generated", embed_dim=8, filters=4)
    assert qc.evaluate(qc.build_model(), "TREC_10").keys() == {"accuracy", "loss"}


# ---- ListOps in Nangia and Bowman's format: label<TAB>expression, no header ----------------------

# lines as the original release writes them (each operand wrapped in parentheses)
ORIGINAL = ["9\t( ( ( [MAX 2 ) 9 ) ] )", "4\t( ( ( [MIN 4 ) 7 ) ] )", "3\t( ( ( [SM 5 ) 8 ) ] )",
            "3\t( ( ( ( [MED 1 ) 3 ) ( ( ( [MAX 6 ) 2 ) ] ) ) ] )"]
SMALL = ["--d-model", 16, "--n-heads", 2, "--d-ff", 32, "--n-layers", 1, "--max-length", 60]


def original_folder(root):
    from qa_tasks.listops import dataset as listops
    folder = root / "listops"
    folder.mkdir(parents=True)
    spec = listops.ListOpsSpec(min_length=5, max_length=60, max_depth=4, max_args=4, n_train=120,
                               n_valid=0, n_test=0)
    listops.write_original_tsv(folder / "train_d20s.tsv", listops.generate(spec)["train"])
    (folder / "test_d20s.tsv").write_text("\n".join(ORIGINAL) + "\n")
    return root


def test_lra_reads_the_original_listops_files(tmp_path):
    from qa_tasks.listops.lra import LRA
    task = LRA(data="real", data_dir=str(original_folder(tmp_path)), d_model=16, n_heads=2, d_ff=32)
    assert set(task.splits()) == {"train", "test", "train_d20s", "test_d20s"} and task.eval_split == "test"
    seqs, labels = task._load("test")
    assert labels.tolist() == [9, 4, 3, 3] and len(seqs[3]) == 8        # [MED 1 3 [MAX 6 2 ] ]
    with pytest.raises(ValueError, match="no split 'valid' .*it has test, train, test_d20s, train_d20s"):
        task.evaluate(task.build_model(), "valid")


def test_gadei_eval_scores_a_model_on_an_original_listops_file(tmp_path):
    data = original_folder(tmp_path / "D")
    out = tmp_path / "run"
    r = run_gadei("train", "--task", "lra", "--data-dir", data, "--learners", 2, "--steps", 20, *SMALL,
                  "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    final = json.loads((out / "summary.json").read_text())["final_metrics"]   # on test: no valid file
    r = run_gadei("eval", "--checkpoint", out, "--data-dir", data, "--split", "test", timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == final and 0.0 <= final["accuracy"] <= 1.0
    r = run_gadei("eval", "--checkpoint", out, "--data-dir", data, "--split", "val", timeout=120)
    assert r.returncode == 2 and "it has test, train, test_d20s, train_d20s" in r.stderr
