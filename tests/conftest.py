"""Shared fixtures: every test must leave /dev/shm and the process table as it found them.

The suite runs on several pytest-xdist workers at once (pytest.ini): what a test checks in
/dev/shm and the process table is its own, never another worker's; the few tests that need
this user's whole /dev/shm to themselves say so with `@pytest.mark.alone`."""
from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from gadei import shm
from gadei.proc import descendants

# the tests that train in this process get one thread, as every learner does: with the default
# (one per core) they slow down several times over whenever other processes hold the cores
torch.set_num_threads(1)


def foreign(name: str, ours: Path | None) -> bool:
    """True for a segment of a job that another live process tree owns (not this test's), one
    this gadei cannot read (another version's: not ours to remove), or, under xdist (`ours` is
    this worker's tmp folder), one of a job that writes into another worker's tmp folder: its
    owner may be dead for a while on purpose there (a killed supervisor's arena waits for its PS)."""
    from gadei import arena as A, proc
    try:
        a = A.Arena.attach(name)
    except FileNotFoundError:
        return False
    except ValueError:
        return True
    try:
        owner, started = a.job.owner_pid, a.job.owner_start
        out = (a.meta.get("config") or {}).get("out")
    finally:
        a.close()
    if ours is not None and isinstance(out, str) and os.path.isabs(out):
        if Path(out).is_relative_to(ours.parent) and not Path(out).is_relative_to(ours):
            return True
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


def sweep_mpich(before: set[str], settle: float = 5.0) -> None:
    """Remove the MPICH segments created during a test that no process maps any more. MPICH
    unlinks its segments once every rank of a node has attached; a rank killed before that (the
    kill -9 and SIGSTOP tests do it on purpose) leaves one behind for good. A segment younger
    than `settle` seconds may be one that another xdist worker's rank has created and not yet
    mapped: it is judged once it is that old."""
    new = mpich_segments() - before
    while new:
        unmapped = new - mapped(new)
        young = set()
        for name in unmapped:
            try:
                age = time.time() - os.stat(f"/dev/shm/{name}").st_ctime
            except FileNotFoundError:
                continue
            if age < settle:
                young.add(name)
                continue
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass
        if not young:
            return
        time.sleep(0.5)
        new = young


def worker_tmp(factory) -> Path | None:
    """This xdist worker's tmp folder (the workers' folders are siblings), or None without xdist."""
    return factory.getbasetemp() if os.environ.get("PYTEST_XDIST_WORKER") else None


@pytest.fixture(scope="session")
def _room(tmp_path_factory):
    """Under xdist, two locks shared by the workers: the room (shared by ordinary tests, held
    alone by `alone` ones) and a turnstile in front of it, so that a waiting `alone` test keeps
    new tests out and is not starved."""
    ours = worker_tmp(tmp_path_factory)
    if ours is None:
        yield None
        return
    with open(ours.parent / "room.lock", "a") as room, open(ours.parent / "turnstile.lock", "a") as turn:
        yield room, turn


@pytest.fixture(autouse=True)
def shared_room(request, _room):
    """A test marked `alone` (it looks at, or sweeps, all of this user's /dev/shm or namespaces)
    runs while no other xdist worker runs a test; the others share the room."""
    if _room is None:
        yield
        return
    room, turn = _room
    fcntl.flock(turn, fcntl.LOCK_EX)
    try:
        by_itself = request.node.get_closest_marker("alone") is not None
        fcntl.flock(room, fcntl.LOCK_EX if by_itself else fcntl.LOCK_SH)
    finally:
        fcntl.flock(turn, fcntl.LOCK_UN)
    try:
        yield
    finally:
        fcntl.flock(room, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def leaves_nothing_behind(shared_room, tmp_path_factory):
    """Fail any test that leaves a gadei segment in /dev/shm or a child process alive; remove the
    segments MPICH left behind (see `sweep_mpich`). Inside `alone`: checked before the room is
    left."""
    ours = worker_tmp(tmp_path_factory)
    before = set(shm.segments())
    mpich_before = mpich_segments()
    kids_before = descendants(os.getpid())
    yield
    sweep_mpich(mpich_before)
    deadline = time.monotonic() + 10
    while True:
        leaked = {n for n in set(shm.segments()) - before if not foreign(n, ours)}
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
