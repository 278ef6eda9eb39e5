"""Fuzzing of each dataset file parser: malformed input is a clear error, never a crash.

Every defect the fuzzing found has a fixed input below that keeps it fixed."""

import gzip
import io
import json
import re
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


ROOT = Path(__file__).resolve().parents[1]


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
