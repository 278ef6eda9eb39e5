"""Privacy of the shared memory, one job per name, layouts that do not match, and no pickle on
any load path (docs/reliability.md)."""

import ast
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from gadei import arena as A
from gadei import shm
from tests.helpers import small_layout

ROOT = Path(__file__).resolve().parents[1]


# ---- security: privacy of the shared memory, one job per name, layouts, no pickle ---------------
def test_segment_is_private_and_unguessable():
    old = os.umask(0)       # the umask cannot widen the mode
    try:
        a = A.Arena.create("sec-mode", small_layout(), {})
    finally:
        os.umask(old)
    try:
        st_ = os.stat(shm.SHM_DIR / a.name)
        assert stat.S_IMODE(st_.st_mode) == 0o600
        assert st_.st_uid == os.getuid()
        m = re.fullmatch(r"gadei_sec-mode_([0-9a-f]{32})", a.name)
        assert m, a.name                                   # 32 hex digits = 128 random bits
    finally:
        a.unlink()
        a.close()
    names = {shm.segment_name("sec-mode") for _ in range(2000)}
    assert len(names) == 2000
    tokens = [n.rsplit("_", 1)[1] for n in names]
    bits = np.unpackbits(np.frombuffer(bytes.fromhex("".join(tokens)), np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01                  # no constant or biased bits


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a child as another user")
def test_another_user_cannot_attach_or_list_a_segment():
    """A process of another uid (nobody, 65534) can neither map the arena nor see it as a job."""
    a = A.Arena.create("sec-uid", small_layout(), {})
    try:
        child = os.fork()
        if child == 0:                         # the other user: exit 0 only if refused everywhere
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                try:
                    A.Arena.attach(a.name)
                except PermissionError as e:
                    code = 0 if "another user" in str(e) and not shm.segments("sec-uid") else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        a.unlink()
        a.close()


def test_segment_is_created_exclusively():
    name = shm.segment_name("sec-excl")
    mm, lock = shm.create(name, 4096)
    try:
        with pytest.raises(FileExistsError):
            shm.create(name, 4096)
    finally:
        mm.close()
        os.close(lock)
        shm.unlink(name)


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b", "", "-x", "x" * 65, "job name", "ø"])
def test_job_names_cannot_escape_dev_shm(bad):
    with pytest.raises(ValueError, match="invalid job name"):
        shm.segment_name(bad)


def test_the_job_lock_refuses_a_second_holder_until_the_first_goes(tmp_path, monkeypatch):
    from gadei.job import JobConfig
    from gadei.job import JobError
    from gadei.supervisor import Supervisor
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    cfg = JobConfig(out=str(tmp_path / "a"), job="sec-dup", learners=1, steps=1)
    first = Supervisor(cfg)
    first.acquire()
    try:
        with pytest.raises(JobError, match="already running"):
            Supervisor(JobConfig(out=str(tmp_path / "b"), job="sec-dup", learners=1, steps=1)).acquire()
    finally:
        first.close()
    second = Supervisor(cfg)          # the lock went with its holder
    second.acquire()
    second.close()


@pytest.mark.parametrize("other", [small_layout(learners=3), small_layout(n=9), small_layout(rule="adam"),
                                   A.Layout(params=(("w", (8,)),), state=(), rule="sgd",
                                            hyper=(("lr", 0.5),), learners=2)])
def test_arena_with_another_layout_is_refused(other):
    a = A.Arena.create("sec-layout", small_layout(), {})
    try:
        with pytest.raises(ValueError, match="different layout"):
            A.Arena.attach(a.name, other.digest())
        b = A.Arena.attach(a.name, small_layout().digest())
        b.close()
    finally:
        a.unlink()
        a.close()


def test_tampered_layout_in_header_is_refused():
    a = A.Arena.create("sec-tamper", small_layout(), {})
    try:
        raw = bytearray(a._mm[64:64 + 4096])
        at = bytes(raw).find(b"learners")
        assert at > 0
        a._mm[64 + at + len(b"learners")] = 3     # msgpack positive fixint 2 -> 3
        with pytest.raises(ValueError, match="corrupt"):
            A.Arena.attach(a.name)
    finally:
        a.unlink()
        a.close()


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def _unsafe_loads(path: Path) -> list[str]:
    """Calls and imports that could unpickle: the pickle family, torch.load without
    weights_only=True, np.load without allow_pickle=False, pandas read_pickle."""
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [f"{path}:{node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            bad.append(f"{path}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            f = node.func
            name = ast.unparse(f)
            kw = {k.arg: k.value for k in node.keywords}

            def const(key, value):
                return key in kw and isinstance(kw[key], ast.Constant) and kw[key].value is value

            if name == "torch.load" and not const("weights_only", True):
                bad.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and not const("allow_pickle", False):
                bad.append(f"{path}:{node.lineno}: {name} without allow_pickle=False")
            elif name.endswith("read_pickle"):
                bad.append(f"{path}:{node.lineno}: {name}")
            elif isinstance(f, ast.Attribute) and f.attr in ("load", "loads", "Unpickler") \
                    and isinstance(f.value, ast.Name) and f.value.id in PICKLE_MODULES:
                bad.append(f"{path}:{node.lineno}: {name}")
    return bad


def test_the_scanner_catches_what_it_should(tmp_path):
    src = tmp_path / "bad.py"
    src.write_text("import pickle\nfrom dill import loads\nimport numpy as np, torch\n"
                   "np.load('x')\nnp.load('x', allow_pickle=True)\ntorch.load('m')\n"
                   "torch.load('m', weights_only=False)\npickle.loads(b'')\n"
                   "np.load('x', allow_pickle=False)\ntorch.load('m', weights_only=True)\n")
    found = _unsafe_loads(src)
    assert [int(f.split(":")[1]) for f in found] == [1, 2, 4, 5, 6, 7, 8], found


def test_no_load_path_unpickles():
    """No pickle anywhere data is read: checkpoints, caches, datasets, weights (docs/reliability.md)."""
    files = [p for d in ("gadei", "algorithms", "qa_tasks", "bench") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    bad = [b for p in files for b in _unsafe_loads(p)]
    assert not bad, "\n".join(bad)
