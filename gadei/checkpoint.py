"""Checkpoints: one file, written atomically, checksummed, no pickle.

File layout::

    b"GADEICK\\x01" | u64 header length | msgpack header | arrays (64-byte aligned) | sha256 (32 bytes)

The header lists each array's name, dtype, shape, offset and byte length, and carries the
metadata (job configuration, layout, version, ledger, learner records). The trailing sha256
covers everything before it. Saving writes `<path>.tmp-<pid>`, fsyncs, then renames over
`path`, so a crash leaves the previous checkpoint whole.
"""
from __future__ import annotations

import hashlib
import os
import struct
import time
from pathlib import Path

import msgpack
import numpy as np

MAGIC = b"GADEICK\x01"
ALIGN = 64
_DTYPES = {"float32", "float64", "int64", "int32", "uint64", "uint8"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or of another format."""


def _resolve(path) -> Path:
    p = Path(path)
    return p / "checkpoint" if p.is_dir() else p


def save(path, weights: dict[str, np.ndarray], state: dict[str, np.ndarray], meta: dict) -> Path:
    """Write a checkpoint to `path` (a file; a directory means `<dir>/checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint"
    entries, arrays, off = [], [], 0
    for group, items in (("weights", weights), ("state", state)):
        for name, arr in items.items():
            arr = np.ascontiguousarray(arr)
            if arr.dtype.name not in _DTYPES:
                raise ValueError(f"cannot checkpoint {group}/{name} of dtype {arr.dtype}")
            entries.append({"group": group, "name": name, "dtype": arr.dtype.name,
                            "shape": list(arr.shape), "offset": off, "nbytes": arr.nbytes})
            arrays.append(arr)
            off += (arr.nbytes + ALIGN - 1) // ALIGN * ALIGN
    header = msgpack.packb({"arrays": entries, "meta": meta})
    start = len(MAGIC) + 8 + len(header)
    start = (start + ALIGN - 1) // ALIGN * ALIGN
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            def write(b):
                digest.update(b)
                f.write(b)
            write(MAGIC + struct.pack("<Q", len(header)) + header)
            write(bytes(start - len(MAGIC) - 8 - len(header)))
            pos = 0
            for e, arr in zip(entries, arrays):
                write(bytes(e["offset"] - pos))
                write(memoryview(arr).cast("B"))
                pos = e["offset"] + e["nbytes"]
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _valid_entry(e) -> bool:
    """An array entry names a known dtype and group, and its byte count matches its shape."""
    try:
        return (isinstance(e, dict) and isinstance(e["name"], str) and e["dtype"] in _DTYPES
                and e["group"] in ("weights", "state") and isinstance(e["offset"], int)
                and e["offset"] >= 0 and isinstance(e["nbytes"], int) and e["nbytes"] >= 0
                and isinstance(e["shape"], list) and all(isinstance(d, int) and d >= 0 for d in e["shape"])
                and e["nbytes"] == int(np.prod(e["shape"], dtype=np.int64)) * np.dtype(e["dtype"]).itemsize)
    except (KeyError, TypeError):
        return False


def load(path) -> dict:
    """Read a checkpoint: {"weights": {name: array}, "state": {name: array}, "meta": {...}}.

    `path` is the checkpoint file or a job's output directory. Every byte is verified against
    the checksum; any damage is a CheckpointError naming the file and what is wrong.
    """
    path = _resolve(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    what = f"checkpoint {path}"
    if len(data) < len(MAGIC) + 8 + 32:
        raise CheckpointError(f"{what} is truncated ({len(data)} bytes)")
    if data[:len(MAGIC)] != MAGIC:
        if data[:7] == MAGIC[:7]:
            raise CheckpointError(f"{what} has format {data[7]}, this gadei reads {MAGIC[7]}")
        raise CheckpointError(f"{what} is not a gadei checkpoint (bad magic)")
    body, stored = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != stored:
        raise CheckpointError(f"{what} is corrupted or truncated (checksum mismatch); "
                              "use an earlier checkpoint")
    (hlen,) = struct.unpack("<Q", data[len(MAGIC):len(MAGIC) + 8])
    try:
        header = msgpack.unpackb(data[len(MAGIC) + 8:len(MAGIC) + 8 + hlen], strict_map_key=False)
    except Exception as e:
        raise CheckpointError(f"{what}: unreadable header ({e})") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list) \
            or not isinstance(header.get("meta", {}), dict):
        raise CheckpointError(f"{what}: malformed header (expected a map with 'arrays' and 'meta')")
    start = (len(MAGIC) + 8 + hlen + ALIGN - 1) // ALIGN * ALIGN
    out = {"weights": {}, "state": {}, "meta": header.get("meta", {})}
    try:
        for e in header["arrays"]:
            if not _valid_entry(e):
                raise CheckpointError(f"{what}: bad array entry {e.get('name') if isinstance(e, dict) else e!r}")
            lo = start + e["offset"]
            if lo + e["nbytes"] > len(body):
                raise CheckpointError(f"{what}: array {e['name']} runs past the end of the file")
            arr = np.frombuffer(data, dtype=e["dtype"], count=e["nbytes"] // np.dtype(e["dtype"]).itemsize,
                                offset=lo).reshape(e["shape"])
            out[e["group"]][e["name"]] = arr.copy()
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{what}: malformed header ({e})") from None
    return out


# ---- a job's checkpoint: the file above with the job's meta ---------------------------------
def save_job(path, config: dict, weights: dict, state: dict, version: int, ledger, final: bool,
             **extra) -> Path:
    """Checkpoint a job at published version `version` with its (uncut) `ledger`: the file
    holds the ledger's checkpoint cut, which `--resume` continues from exactly once."""
    meta = {"config": config, "version": version, **ledger.cut().to_checkpoint(),
            "optimizer": config["optimizer"], "learners": config["learners"], "task": config["task"],
            "task_options": config["task_options"], "final": final, "time": time.time(), **extra}
    return save(path, weights, state, meta)


def load_job(path, *, task: str, params: list, optimizer: str, learners: int) -> dict:
    """A checkpoint to resume a job from, checked against that job (its model's parameters,
    optimizer and learner count); its "ledger" is a `gadei.ledger.Ledger`."""
    from gadei.ledger import Ledger
    ck = load(path)
    meta = ck["meta"]
    got = [(k, tuple(v.shape)) for k, v in ck["weights"].items()]
    why = None
    if got != [(k, tuple(s)) for k, s in params]:
        why = f"its model ({len(got)} tensors) differs from task {task!r}'s ({len(params)} tensors)"
    elif meta.get("optimizer") != optimizer:
        why = f"it was trained with optimizer {meta.get('optimizer')!r}, not {optimizer!r}"
    elif meta.get("learners") != learners:
        why = f"it ran {meta.get('learners')} learners, this job asks for {learners}"
    if why:
        raise CheckpointError(f"cannot resume from {path}: {why}")
    try:
        ck["ledger"] = Ledger.from_checkpoint(meta)
        ck["version"] = int(meta["version"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    return ck
