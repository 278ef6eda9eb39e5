"""Shared fixtures: every test must leave /dev/shm and the process table as it found them."""
from __future__ import annotations

import os
import signal
import time

import pytest

from gadei import shm


def descendants(root: int) -> set[int]:
    """Live (non-zombie) descendants of `root`, from /proc."""
    parent = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] != b"Z":
            parent[int(entry)] = int(fields[1])
    out, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


@pytest.fixture(autouse=True)
def leaves_nothing_behind():
    """Fail any test that leaves a gadei segment in /dev/shm or a child process alive."""
    before = set(shm.segments())
    kids_before = descendants(os.getpid())
    yield
    deadline = time.monotonic() + 10
    while True:
        leaked = set(shm.segments()) - before
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
