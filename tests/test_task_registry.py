"""Tasks by name: the `gadei.tasks` entry-point group, a third-party package that registers its
own task with no change to gadei, the listing, and the core that imports no workload."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import gadei
from gadei import task as T
from tests.helpers import gadei_cmd


def test_import_gadei_loads_no_workload():
    code = "import gadei, sys; print([m for m in sys.modules if m.startswith('qa_tasks')])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]"


def test_the_built_in_tasks_are_registered_and_listed():
    assert {"probe", "qc", "nlc", "qa", "asr", "lra"} <= set(T.registered())
    r = subprocess.run(gadei_cmd("tasks"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert {"probe", "qc", "nlc", "qa", "asr", "lra"} <= set(names)


def test_an_unknown_task_names_the_registered_ones():
    with pytest.raises(ValueError, match="unknown task 'nosuch'.*probe"):
        T.task_class("nosuch")


@pytest.mark.timeout(300)
def test_a_third_party_package_registers_a_task(tmp_path):
    """A package pip-installed on its own, declaring one task under `gadei.tasks`, is listed
    and trains by its name."""
    src = tmp_path / "src"
    (src / "blobtask").mkdir(parents=True)
    (src / "blobtask" / "__init__.py").write_text(textwrap.dedent('''

        from tests.tasks import Blobs


        class ThirdPartyBlobs(Blobs):
            """Blobs from a package of its own."""
    '''))
    (src / "setup.py").write_text(textwrap.dedent('''
        from setuptools import setup
        setup(name="blobtask", version="0.1", packages=["blobtask"],
              entry_points={"gadei.tasks": ["blobs3 = blobtask:ThirdPartyBlobs"]})
    '''))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, timeout=240,
                   capture_output=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), root])}
    listed = subprocess.run(gadei_cmd("tasks"), capture_output=True, text=True, timeout=120, env=env)
    assert "blobs3" in listed.stdout and "Blobs from a package of its own" in listed.stdout
    out = tmp_path / "run"
    r = subprocess.run(gadei_cmd("train", "--task", "blobs3", "--learners", 2, "--steps", 40,
                                 "--out", out, "--no-progress"), capture_output=True, text=True,
                       timeout=240, env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["task"] == "blobs3" and summary["updates_applied"] == 40


def test_a_mistyped_job_option_is_an_error_not_a_hyper_parameter(tmp_path):
    with pytest.raises(ValueError, match="unknown option checkpoint_evry"):
        gadei.train("tests.tasks:Blobs", optimizer="sgd", checkpoint_evry=5, out=tmp_path)


def test_task_and_optimizer_options_are_in_the_help():
    r = subprocess.run(gadei_cmd("train", "--task", "probe", "--optimizer", "adam", "--help"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert "--probe-size" in r.stdout and "--beta2" in r.stdout and "--checkpoint-every" in r.stdout
