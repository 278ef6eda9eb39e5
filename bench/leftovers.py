"""After a campaign job: what it left behind (live processes, shared-memory segments), removed
so that a failing job does not poison the next one."""
from __future__ import annotations

import os
import signal
import time
from typing import Callable

from gadei import proc, shm


def sweep(pids: dict[int, int], segments: Callable[[], list[str]],
          grace: float) -> tuple[list[int], list[str]]:
    """Wait up to `grace` s for the processes (pid -> start time; 0 = unknown, skipped) to end
    and `segments()` to be empty; SIGKILL and unlink whatever is left. Returns what was left."""
    deadline = time.monotonic() + grace
    while True:
        alive = [pid for pid, st in pids.items() if st and proc.alive(pid, st)]
        segs = segments()
        if not alive and not segs or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name in segs:
        shm.unlink(name)
    return alive, segs
