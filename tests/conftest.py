"""Shared fixtures: every test must leave /dev/shm and the process table as it found them."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from gadei import shm
from gadei.proc import descendants

# the tests that train in this process get one thread, as every learner does: with the default
# (one per core) they slow down several times over whenever other processes hold the cores
torch.set_num_threads(1)


def foreign(name: str) -> bool:
    """True for a segment of a job that another live process tree owns (not this test's), or
    one this gadei cannot read (another version's: not ours to remove)."""
    from gadei import arena as A, proc
    try:
        a = A.Arena.attach(name)
    except FileNotFoundError:
        return False
    except ValueError:
        return True
    try:
        owner, started = a.job.owner_pid, a.job.owner_start
    finally:
        a.close()
    mine = {os.getpid()} | descendants(os.getpid())
    return owner not in mine and proc.alive(owner, started)


def mpich_segments() -> set[str]:
    """MPICH's own shared-memory files in /dev/shm."""
    return {n for n in os.listdir("/dev/shm") if n.startswith("mpich_shm_")}


def mapped(names: set[str]) -> set[str]:
    """Those of `names` (files in /dev/shm) that some live process still maps."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                found |= {n for n in names if f"/dev/shm/{n}" in f.read()}
        except OSError:   # gone, or not ours to read
            continue
    return found


def sweep_mpich(before: set[str]) -> None:
    """Remove the MPICH segments created during a test that no process maps any more. MPICH
    unlinks its segments once every rank of a node has attached; a rank killed before that (the
    kill -9 and SIGSTOP tests do it on purpose) leaves one behind for good."""
    new = mpich_segments() - before
    for name in new - mapped(new):
        try:
            os.unlink(f"/dev/shm/{name}")
        except FileNotFoundError:
            pass


@pytest.fixture(autouse=True)
def leaves_nothing_behind():
    """Fail any test that leaves a gadei segment in /dev/shm or a child process alive; remove the
    segments MPICH left behind (see `sweep_mpich`)."""
    before = set(shm.segments())
    mpich_before = mpich_segments()
    kids_before = descendants(os.getpid())
    yield
    sweep_mpich(mpich_before)
    deadline = time.monotonic() + 10
    while True:
        leaked = {n for n in set(shm.segments()) - before if not foreign(n)}
        kids = descendants(os.getpid()) - kids_before
        if not leaked and not kids or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for name in leaked:
        shm.unlink(name)
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not leaked, f"test left shared-memory segments behind: {sorted(leaked)}"
    assert not kids, f"test left child processes running: {sorted(kids)}"
