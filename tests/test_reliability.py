"""Reliability and security: the chaos and soak campaigns in small, fuzzing of everything that
reads bytes from outside (checkpoints, arena headers, dataset files), and the privacy promises
of the shared memory (docs/reliability.md lists what each test proves).

Every defect the fuzzing found has a fixed input below that keeps it fixed.
"""
from __future__ import annotations

import ast
import gzip
import io
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time
import wave
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gadei import arena as A
from gadei import checkpoint, shm
from gadei.probe import Probe

ROOT = Path(__file__).resolve().parents[1]

# A task whose module takes a while to import, as a user's module with heavy imports (or any
# module under a loaded machine) does: each role imports it before its first heartbeat.
if os.environ.get("GADEI_TEST_IMPORT_DELAY"):
    time.sleep(float(os.environ["GADEI_TEST_IMPORT_DELAY"]))


class SlowTask(Probe):
    """The probe, in a module that is slow to import (see GADEI_TEST_IMPORT_DELAY above)."""

    def __init__(self, *, probe_size: int = 16):
        super().__init__(probe_size=probe_size)


FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


# ---- the campaigns, small ---------------------------------------------------------------------
def _bench(module: str, tmp_path: Path, *args, timeout: int) -> dict:
    out = tmp_path / f"{module}.json"
    r = subprocess.run([sys.executable, "-m", f"bench.{module}", "--quick", "--json", str(out), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return result


@pytest.mark.timeout(900)
def test_chaos_quick_has_no_violation(tmp_path):
    """Kills of learners and the PS (ASGD and DOWNPOUR), SIGSTOP past the lease, a killed
    supervisor then --resume: every job audited, nothing left behind."""
    res = _bench("chaos", tmp_path, "--workdir", str(tmp_path / "work"), timeout=850)
    t = res["total"]
    assert t["violations"] == 0, [r.get("violations") for r in res["jobs"]]
    assert t["jobs"] >= 4 and t["kills"] >= 2 and t["kills_supervisor"] == 1
    assert t["committed"] == t["applied"] + t["rejected"]
    assert {r["scenario"] for r in res["jobs"]} >= {"asgd", "downpour", "stop", "crash"}
    stop = next(r for r in res["jobs"] if r["scenario"] == "stop")
    assert stop["stops"] == 1 and stop["replaced_after_s"] >= stop["lease_s"] * 0.9
    assert stop["sigcont_delivered"] is False     # the stopped process was dead (SIGKILLed)


@pytest.mark.timeout(600)
def test_soak_quick_is_steady_and_clean(tmp_path):
    res = _bench("soak", tmp_path, "--seconds", "30", "--workdir", str(tmp_path / "work"), timeout=550)
    assert res["violations"] == []
    assert res["restarts"] == {"ps": 0, "learners": 0}
    assert res["updates_applied"] > 0 and res["committed"] == res["applied"]
    assert res["stop_s"] is not None and res["stop_s"] < 120


# ---- checkpoints ------------------------------------------------------------------------------
def _write_checkpoint(tmp_path: Path) -> tuple[Path, bytes]:
    weights = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float32)}
    state = {"m": np.full(17, 2.5, np.float32), "step": np.array([7], np.int64)}
    meta = {"version": 3, "ledger": {"amax": [1, 2]}, "optimizer": "sgd"}
    path = checkpoint.save(tmp_path / "ck", weights, state, meta)
    return path, path.read_bytes()


def _seal(body: bytes) -> bytes:
    """`body` with a correct sha256 trailer: damage that the checksum cannot catch."""
    import hashlib
    return body + hashlib.sha256(body).digest()


def _crafted(header: object, arrays: bytes = b"", hlen: int | None = None) -> bytes:
    """A checkpoint with a valid checksum around an arbitrary (msgpack) header."""
    blob = msgpack.packb(header)
    head = checkpoint.MAGIC + struct.pack("<Q", len(blob) if hlen is None else hlen) + blob
    pad = (-len(head)) % checkpoint.ALIGN
    return _seal(head + bytes(pad) + arrays)


def _load_bytes(tmp_path: Path, data: bytes):
    p = tmp_path / "fuzzed"
    p.write_bytes(data)
    return checkpoint.load(p)


def _must_reject(tmp_path: Path, data: bytes) -> None:
    try:
        got = _load_bytes(tmp_path, data)
    except checkpoint.CheckpointError as e:
        assert str(e) and "fuzzed" in str(e), f"the message should name the file: {e}"
        return
    pytest.fail(f"damaged checkpoint accepted: {json.dumps({k: sorted(v) for k, v in got.items() if isinstance(v, dict)})}")


def test_checkpoint_round_trip(tmp_path):
    path, _ = _write_checkpoint(tmp_path)
    ck = checkpoint.load(path)
    assert ck["weights"]["w"].shape == (3, 4) and ck["state"]["step"][0] == 7
    assert ck["meta"]["version"] == 3


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_checkpoint_truncated_is_refused(tmp_path_factory, cut):
    tmp = tmp_path_factory.mktemp("trunc")
    _, data = _write_checkpoint(tmp)
    assume(cut < len(data))
    _must_reject(tmp, data[:cut])


@FUZZ
@given(pos=st.integers(min_value=0, max_value=10_000), bit=st.integers(min_value=0, max_value=7))
def test_checkpoint_bit_flip_is_refused(tmp_path_factory, pos, bit):
    tmp = tmp_path_factory.mktemp("flip")
    _, data = _write_checkpoint(tmp)
    pos %= len(data)
    _must_reject(tmp, data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:])


@FUZZ
@given(version=st.integers(min_value=0, max_value=255).filter(lambda v: v != checkpoint.MAGIC[7]))
def test_checkpoint_other_format_version_is_refused(tmp_path_factory, version):
    tmp = tmp_path_factory.mktemp("ver")
    _, data = _write_checkpoint(tmp)
    data = data[:7] + bytes([version]) + data[8:]
    with pytest.raises(checkpoint.CheckpointError, match="format"):
        _load_bytes(tmp, data)
    # even with a checksum that matches the changed bytes
    with pytest.raises(checkpoint.CheckpointError, match="format"):
        _load_bytes(tmp, _seal(data[:-32]))


@FUZZ
@given(data=st.binary(max_size=4096), keep_magic=st.booleans())
def test_checkpoint_random_bytes_are_refused(tmp_path_factory, data, keep_magic):
    tmp = tmp_path_factory.mktemp("rand")
    if keep_magic:
        data = checkpoint.MAGIC + data
    _must_reject(tmp, data)


def _good_entry():
    return {"group": "weights", "name": "w", "dtype": "float32", "shape": [4], "offset": 0, "nbytes": 16}


BAD_ENTRIES = [
    ("offset past the end", {"offset": 4096}),
    ("huge nbytes", {"nbytes": 1 << 40}),
    ("unknown dtype", {"dtype": "object"}),
    ("dtype not a string", {"dtype": 5}),
    ("unknown group", {"group": "optimizer"}),
    ("shape does not match nbytes (reshape fails)", {"shape": [5]}),
    ("shape not a list", {"shape": "four"}),
    ("offset not an integer", {"offset": "0"}),
    ("negative offset", {"offset": -64}),
    ("negative nbytes", {"nbytes": -4, "shape": [-1]}),
    ("nbytes smaller than the shape", {"nbytes": 8, "shape": [4]}),
    ("nbytes not a multiple of the item size", {"nbytes": 15, "shape": [3]}),
    ("name not a string", {"name": 7}),
    ("missing key", {"nbytes": None}),
    ("offset past int64", {"offset": (1 << 64) - 1}),
    ("nbytes past int64", {"nbytes": (1 << 64) - 1}),
]
@pytest.mark.parametrize("what, change", BAD_ENTRIES)
def test_checkpoint_bad_array_entry_is_refused(tmp_path, what, change):
    entry = {**_good_entry(), **change}
    entry = {k: v for k, v in entry.items() if v is not None}
    arrays = np.arange(16, dtype=np.float32).tobytes()
    _must_reject(tmp_path, _crafted({"arrays": [entry], "meta": {}}, arrays))


@pytest.mark.parametrize("header", [
    {"arrays": 5, "meta": {}},
    {"arrays": [5], "meta": {}},
    {"arrays": [[1, 2]], "meta": {}},
    {"meta": {}},
    [1, 2, 3],
    {"arrays": [], "meta": 5},
])
def test_checkpoint_malformed_header_is_refused(tmp_path, header):
    _must_reject(tmp_path, _crafted(header))


@pytest.mark.parametrize("hlen", [0, 1, 3, 1 << 20, (1 << 64) - 1])
def test_checkpoint_header_length_lies(tmp_path, hlen):
    _must_reject(tmp_path, _crafted({"arrays": [], "meta": {}}, hlen=hlen))


@FUZZ
@given(header=st.recursive(st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.text(max_size=8)
                           | st.binary(max_size=8),
                           lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.sampled_from(["arrays", "meta", "group", "name", "dtype",
                                                              "shape", "offset", "nbytes"]), c, max_size=6),
                           max_leaves=20))
def test_checkpoint_any_header_is_an_error_or_a_consistent_result(tmp_path_factory, header):
    """Whatever the (checksummed) header holds: CheckpointError, or arrays that exactly match
    their entries. Never another exception."""
    tmp = tmp_path_factory.mktemp("hdr")
    try:
        ck = _load_bytes(tmp, _crafted(header, bytes(256)))
    except checkpoint.CheckpointError:
        return
    entries = header["arrays"]
    got = {(g, n): a for g in ("weights", "state") for n, a in ck[g].items()}
    assert len(got) <= len(entries)
    for e in entries:
        a = got.get((e["group"], e["name"]))
        if a is not None and e["nbytes"] >= 0:
            assert list(a.shape) == list(e["shape"])


# ---- arena headers ----------------------------------------------------------------------------
def _layout(learners=2, n=8, rule="sgd"):
    return A.Layout(params=(("w", (n,)),), state=(), rule=rule, hyper=(("lr", 1.0),), learners=learners)


def _attach_junk(header: bytes, size: int = 256 * 1024, digest=None) -> None:
    name = shm.segment_name("fuzz-arena")
    mm = shm.create(name, size)
    try:
        mm[0:len(header)] = header
        mm.close()
        a = A.Arena.attach(name, digest)
        a.close()
        pytest.fail("a damaged arena header was accepted")
    finally:
        shm.unlink(name)


def _valid_header(layout: A.Layout, meta: dict | None = None, meta_len: int | None = None,
                  fmt: int = A.FORMAT, digest: bytes | None = None) -> bytes:
    blob = msgpack.packb({"job": "fuzz-arena", "layout": layout.to_dict(), **(meta or {})})
    return (A.MAGIC + struct.pack("<II", fmt, len(blob) if meta_len is None else meta_len)
            + (digest or layout.digest()) + bytes(16) + blob)


@FUZZ
@given(prefix=st.sampled_from([b"", A.MAGIC, A.MAGIC + struct.pack("<I", A.FORMAT)]),
       junk=st.binary(min_size=1, max_size=512))
def test_arena_random_header_is_refused(prefix, junk):
    with pytest.raises(ValueError):
        _attach_junk(prefix + junk)


@FUZZ
@given(pos=st.integers(min_value=0, max_value=400), bit=st.integers(min_value=0, max_value=7))
def test_arena_bit_flip_in_header_is_refused_or_harmless(pos, bit):
    """A flipped bit in magic, format, length, digest or the layout is refused; one in the other
    metadata (not covered by the digest) must still attach to the same layout."""
    hdr = bytearray(_valid_header(_layout()))
    pos %= len(hdr)
    hdr[pos] ^= 1 << bit
    name = shm.segment_name("fuzz-arena")
    mm = shm.create(name, A._offsets(_layout()).total)
    try:
        mm[0:len(hdr)] = bytes(hdr)
        mm.close()
        try:
            a = A.Arena.attach(name, _layout().digest())
        except ValueError as e:
            assert name in str(e) or "msgpack" in repr(type(e)) or str(e), e
            return
        try:
            assert a.layout == _layout()
        finally:
            a.close()
    finally:
        shm.unlink(name)


@pytest.mark.parametrize("case", ["meta not a map", "meta without layout", "layout missing keys",
                                  "meta length past the segment", "layout of another size"])
def test_arena_malformed_meta_is_a_clear_error(case):
    lay = _layout()
    if case == "meta not a map":
        blob = msgpack.packb(5)
        hdr = A.MAGIC + struct.pack("<II", A.FORMAT, len(blob)) + lay.digest() + bytes(16) + blob
    elif case == "meta without layout":
        blob = msgpack.packb({"job": "x"})
        hdr = A.MAGIC + struct.pack("<II", A.FORMAT, len(blob)) + lay.digest() + bytes(16) + blob
    elif case == "layout missing keys":
        blob = msgpack.packb({"job": "x", "layout": {"params": []}})
        hdr = A.MAGIC + struct.pack("<II", A.FORMAT, len(blob)) + lay.digest() + bytes(16) + blob
    elif case == "meta length past the segment":
        hdr = _valid_header(lay, meta_len=A.META_MAX + 10_000_000)
    else:   # a consistent header (right digest) for a layout larger than the segment
        big = _layout(learners=64, n=1 << 20)
        hdr = _valid_header(big)
    with pytest.raises(ValueError):
        _attach_junk(hdr, size=A._offsets(lay).total)


# ---- security: privacy of the shared memory, one job per name, layouts, no pickle ---------------
def test_segment_is_private_and_unguessable():
    old = os.umask(0)       # the umask cannot widen the mode
    try:
        a = A.Arena.create("sec-mode", _layout(), {})
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
    a = A.Arena.create("sec-uid", _layout(), {})
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
    mm = shm.create(name, 4096)
    try:
        with pytest.raises(FileExistsError):
            shm.create(name, 4096)
    finally:
        mm.close()
        shm.unlink(name)


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b", "", "-x", "x" * 65, "job name", "ø"])
def test_job_names_cannot_escape_dev_shm(bad):
    with pytest.raises(ValueError, match="invalid job name"):
        shm.segment_name(bad)


def test_second_job_with_the_same_name_is_refused(tmp_path, monkeypatch):
    from gadei.job import JobConfig
    from gadei.supervisor import JobError, Supervisor
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


@pytest.mark.parametrize("other", [_layout(learners=3), _layout(n=9), _layout(rule="adam"),
                                   A.Layout(params=(("w", (8,)),), state=(), rule="sgd",
                                            hyper=(("lr", 0.5),), learners=2)])
def test_arena_with_another_layout_is_refused(other):
    a = A.Arena.create("sec-layout", _layout(), {})
    try:
        with pytest.raises(ValueError, match="different layout"):
            A.Arena.attach(a.name, other.digest())
        b = A.Arena.attach(a.name, _layout().digest())
        b.close()
    finally:
        a.unlink()
        a.close()


def test_tampered_layout_in_header_is_refused():
    a = A.Arena.create("sec-tamper", _layout(), {})
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
    """No pickle anywhere data is read: checkpoints, caches, datasets, weights (DESIGN.md 7)."""
    files = [p for d in ("gadei", "algorithms", "qa_tasks", "bench") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    bad = [b for p in files for b in _unsafe_loads(p)]
    assert not bad, "\n".join(bad)


# ---- a lease shorter than start-up ----------------------------------------------------------
@pytest.mark.timeout(300)
def test_a_slow_start_is_not_a_missed_lease(tmp_path):
    out = tmp_path / "slow"
    p = subprocess.Popen([sys.executable, "-m", "gadei", "train", "--task", "tests.test_reliability:SlowTask",
                          "--learners", "1", "--steps", "20", "--lr", "1", "--lease", "3", "--out", str(out),
                          "--job", "rel-slow", "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "GADEI_TEST_IMPORT_DELAY": "6"})
    try:
        p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
    log, _ = p.communicate(timeout=120)
    s = json.loads((out / "summary.json").read_text())
    assert s["restarts"] == {"ps": 0, "learners": 0}, log[-2000:]
    assert not s["interrupted"]


# ---- dataset loaders: fuzzing of each file parser ---------------------------------------------
def _wav(samples: int = 400, rate: int = 8000, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes((np.arange(samples * channels, dtype=np.int64) % 200 - 100).astype(f"<i{width}").tobytes())
    return buf.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _loaders():
    """(name, valid file content, file name, compressed?, parse(path)) for each task's reader."""
    from qa_tasks.answer_selection import insuranceqa
    from qa_tasks.listops import dataset as listops
    from qa_tasks.speech import fsdd
    from qa_tasks.text_classification import clinc, trec
    data = {"train": [["what is my balance", "balance"]], "val": [["my balance", "balance"]],
             "oos_train": [["hello there", "oos"]], "oos_val": [["hi", "oos"]]}
    vocab = {"idx_1": "hello", "idx_2": "world"}
    return [
        ("trec.read_trec", b"DESC:manner How did serfdom develop in Russia ?\nHUM:ind Who killed Gandhi ?\n",
         "train_5500.label", False, trec.read_trec),
        ("clinc.read_clinc", json.dumps(data).encode(), "data_full.json", False, clinc.read_clinc),
        ("clinc.read_clinc gz", json.dumps(data).encode(), "data_full.json.gz", True, clinc.read_clinc),
        ("insuranceqa.read_vocabulary", b"idx_1\thello\nidx_2\tworld\n", "vocabulary.gz", True,
         insuranceqa.read_vocabulary),
        ("insuranceqa.read_answers", json.dumps({"1": {"en": "an answer"}, "2": {"en": "x"}}).encode(),
         "answers.json.gz", True, insuranceqa.read_answers),
        ("insuranceqa.read_pool_file", b"auto\tidx_1 idx_2\t1\t1 2 3\nlife\tidx_2\t2\t2 3\n",
         "InsuranceQA.question.anslabel.token.500.pool.solr.train.encoded.gz", True,
         lambda p: insuranceqa.read_pool_file(p, vocab)),
        ("listops.read_lra_tsv", b"Source\tTarget\n( ( [MAX 2 ) 9 ) ]\t9\n[SM 1 2 ]\t3\n", "basic_train.tsv",
         False, listops.read_lra_tsv),
        ("listops.read_original_tsv", b"9\t( [MAX 2 9 ] )\n3\t[SM 1 2 ]\n", "train_d20s.tsv", False,
         listops.read_original_tsv),
        ("fsdd.decode_wav", _wav(), "3_theo_12.wav", False, lambda p: fsdd.decode_wav(p.read_bytes(), p.name)),
        ("fsdd._read_source tar.gz", _tar_gz({"recordings/3_theo_12.wav": _wav(),
                                              "recordings/4_theo_1.wav": _wav(300)}),
         "recordings.tar.gz", False, fsdd._read_source),
    ]


LOADERS = {name: rest for name, *rest in _loaders()}

KINDS = ["truncate", "flip", "binary", "utf16", "latin1", "empty", "huge-line", "nul"]


def _mutate(valid: bytes, kind: str, data) -> bytes:
    if kind == "truncate":
        return valid[:data.draw(st.integers(0, max(0, len(valid) - 1)))]
    if kind == "flip":
        pos = data.draw(st.integers(0, len(valid) - 1))
        return valid[:pos] + bytes([valid[pos] ^ (1 << data.draw(st.integers(0, 7)))]) + valid[pos + 1:]
    if kind == "binary":
        return data.draw(st.binary(min_size=1, max_size=2048))
    if kind == "utf16":
        return valid.decode("latin-1").encode("utf-16")
    if kind == "latin1":
        pos = data.draw(st.integers(0, len(valid)))
        return valid[:pos] + "é à ü".encode("latin-1") + valid[pos:]
    if kind == "empty":
        return b""
    if kind == "huge-line":
        pos = data.draw(st.integers(0, len(valid)))
        return valid[:pos] + data.draw(st.sampled_from([b"a", b"9 ", b"[MAX ", b"\t", b"{", b"idx_1 "])) * 100_000 \
            + valid[pos:]
    return valid.replace(b" ", b"\x00", 1)      # "nul"


def _check_loader(name: str, path: Path) -> None:
    _, _, _, parse = LOADERS[name]
    try:
        parse(path)
    except (ValueError, FileNotFoundError) as e:   # the task-specific errors derive from these
        assert path.name in str(e), f"{type(e).__name__} does not name the file: {e}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(LOADERS))
@settings(max_examples=25, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_loader_fuzz(tmp_path_factory, name, data):
    """Truncated, bit-flipped, binary, wrongly encoded, empty, huge-line, NUL files: a clear
    error naming the file (ValueError / FileNotFoundError / a subclass), or a parse. Never
    another exception, never a hang (the test's timeout)."""
    valid, fname, compressed, _ = LOADERS[name]
    kind = data.draw(st.sampled_from(KINDS + (["gz-raw"] if compressed else [])))
    if kind == "gz-raw":      # damage the compressed bytes themselves
        blob = _mutate(gzip.compress(valid), data.draw(st.sampled_from(["truncate", "flip", "binary"])), data)
    else:
        blob = _mutate(valid, kind, data)
        blob = gzip.compress(blob) if compressed else blob
    path = tmp_path_factory.mktemp("loader") / fname
    path.write_bytes(blob)
    _check_loader(name, path)


def _found_by_fuzzing():
    """One input per defect the fuzzing found (each escaped as a raw error without the file
    name until qa_tasks.common.reading): every one must stay a clear error naming the file."""
    wav = _wav()
    tgz = _tar_gz({"recordings/3_theo_12.wav": wav})
    gz = gzip.compress(b"idx_1\thello\n")
    return [
        ("clinc.read_clinc gz", gz[:10] + bytes([gz[10] ^ 1]) + gz[11:], "zlib.error"),
        ("insuranceqa.read_vocabulary", b"not gzip at all", "BadGzipFile"),
        ("insuranceqa.read_answers", gzip.compress(b"\xff\xfe{}"), "UnicodeDecodeError"),
        ("insuranceqa.read_pool_file", gz[:len(gz) // 2], "EOFError"),
        ("listops.read_lra_tsv", b"Source\tTarget\n\xe9\t1\n", "UnicodeDecodeError"),
        ("listops.read_original_tsv", b"1\t\xe9\n", "UnicodeDecodeError"),
        ("fsdd.decode_wav", wav[:12] + "é à ü".encode("latin-1") + wav[12:], "RuntimeError"),
        ("fsdd._read_source tar.gz", tgz[:len(tgz) // 2], "EOFError"),
    ]


@pytest.mark.parametrize("name, blob, raw",
                         [pytest.param(n, b, r, id=f"{n}: {r}") for n, b, r in _found_by_fuzzing()])
def test_loader_defect_found_by_fuzzing_is_a_clear_error(tmp_path, name, blob, raw):
    _, fname, _, parse = LOADERS[name]
    path = tmp_path / fname
    path.write_bytes(blob)
    with pytest.raises(ValueError, match=re.escape(fname)) as e:
        parse(path)
    assert raw in str(e.value)             # what was wrong, by the name of its cause


@pytest.mark.parametrize("name", list(LOADERS))
def test_loader_reads_its_valid_sample(tmp_path, name):
    valid, fname, compressed, parse = LOADERS[name]
    path = tmp_path / fname
    path.write_bytes(gzip.compress(valid) if compressed else valid)
    assert parse(path) is not None


def test_loader_missing_file_is_a_clear_error(tmp_path):
    for name, (_, fname, _, parse) in LOADERS.items():
        with pytest.raises((FileNotFoundError, ValueError), match=re.escape(fname)):
            parse(tmp_path / fname)


def test_listops_deep_nesting_is_not_a_crash(tmp_path):
    from qa_tasks.listops import dataset as listops
    path = tmp_path / "deep.tsv"
    path.write_text("Source\tTarget\n" + "[MAX " * 2000 + "7 " + "] " * 2000 + "\t7\n")
    rows = listops.read_lra_tsv(path)
    assert rows[0][1] == 7


def test_clinc_deep_json_is_a_clear_error(tmp_path):
    from qa_tasks.text_classification import clinc
    path = tmp_path / "data_full.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match="data_full.json"):
        clinc.read_clinc(path)


# ---- an interrupted job must not report committed gradients it never applied ------------------
@pytest.mark.timeout(300)
def test_interrupt_does_not_lose_committed_gradients(tmp_path):
    from gadei import proc
    from gadei.probe import audit
    from tests.helpers import wait_for_job
    out = tmp_path / "intr"
    p = subprocess.Popen([sys.executable, "-m", "gadei", "train", "--task", "probe", "--learners", "2",
                          "--steps", "10000000", "--lr", "1", "--lease", "600", "--out", str(out),
                          "--job", "rel-intr", "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        ps, _ = wait_for_job("rel-intr", timeout=180)
        time.sleep(1.0)
        os.kill(ps, signal.SIGSTOP)          # a PS that is slow to drain (descheduled, swapped)
        time.sleep(3.0)                      # the learners fill their slots: committed
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=120)
    finally:
        if proc.alive(ps, 0):
            os.kill(ps, signal.SIGCONT)
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert json.loads((out / "summary.json").read_text())["interrupted"]
    assert audit(out) == []
