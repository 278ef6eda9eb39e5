"""Built-in fault injection: crash a role at a named protocol point (for tests and chaos runs).

GADEI_FAULTS holds comma-separated `point:who:at` entries; when role `who` (a learner number,
or "ps") reaches `point` with sequence number / version `at`, it SIGKILLs itself, exactly as
an external kill -9 would. Points:

    learner_writing    learner claimed slot (WRITING, at) and has not committed it
    learner_committed  learner committed seq `at` (READY) and has not recorded it further
    ps_computed        PS wrote version `at` into the unpublished buffer, not yet published
    ps_published       PS published version `at`, not yet freed the slot
"""
from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("GADEI_FAULTS", "")
_ARMED = {tuple(e.split(":")) for e in _SPEC.split(",") if e.count(":") == 2}


def point(name: str, who, at: int) -> None:
    if _ARMED and (name, str(who), str(at)) in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
