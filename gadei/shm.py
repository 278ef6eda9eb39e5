"""Named POSIX shared-memory segments without Python's resource tracker.

Python 3.11's `multiprocessing.shared_memory` registers every segment a process *attaches*
with that process's resource tracker, which unlinks it when the process exits: a restarted
learner or an MPI rank would delete the live arena. We map `/dev/shm/<name>` with `os.open`
and `mmap` instead: the creator (the supervisor) is the one owner that creates and unlinks.
"""
from __future__ import annotations

import mmap
import os
import secrets
import re
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")
PREFIX = "gadei_"
_JOB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_job_id(job: str) -> str:
    if not _JOB_RE.match(job):
        raise ValueError(f"invalid job name {job!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return job


def segment_name(job: str) -> str:
    """`gadei_<job>_<128 random bits>`: carries the job id, and cannot be guessed."""
    return f"{PREFIX}{check_job_id(job)}_{secrets.token_hex(16)}"


def job_of(name: str) -> str | None:
    """The job id in a segment name, or None if it is not a gadei segment."""
    if not name.startswith(PREFIX):
        return None
    job, sep, token = name[len(PREFIX):].rpartition("_")
    return job if sep and len(token) == 32 else None


def create(name: str, size: int) -> mmap.mmap:
    """Create segment `name` (O_EXCL, mode 0600) of `size` bytes, touched once.

    Touching every page now moves the page faults (about 1.5 GB/s against 26 GB/s afterwards)
    out of the first updates.
    """
    fd = os.open(SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask cannot widen it, but make it explicit
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        unlink(name)
        raise
    os.close(fd)
    pages = np.frombuffer(mm, np.uint8)
    pages[::mmap.PAGESIZE] = 0
    del pages
    return mm


def attach(name: str) -> mmap.mmap:
    """Map an existing segment read-write; a clear error if it is gone or not ours."""
    try:
        fd = os.open(SHM_DIR / name, os.O_RDWR)
    except FileNotFoundError:
        raise FileNotFoundError(f"shared-memory segment {name} does not exist: the job has ended "
                                "or was cleaned up") from None
    except PermissionError:
        raise PermissionError(f"shared-memory segment {name} belongs to another user") from None
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def exists(name: str) -> bool:
    return (SHM_DIR / name).exists()


def unlink(name: str) -> bool:
    try:
        os.unlink(SHM_DIR / name)
        return True
    except FileNotFoundError:
        return False


def segments(job: str | None = None) -> list[str]:
    """Names of this user's gadei segments (of one job, if given)."""
    if not SHM_DIR.is_dir():
        return []
    uid = os.getuid()
    out = []
    for entry in os.scandir(SHM_DIR):
        j = job_of(entry.name)
        if j is None or (job is not None and j != job):
            continue
        try:
            if entry.stat().st_uid == uid:
                out.append(entry.name)
        except FileNotFoundError:
            continue
    return sorted(out)
