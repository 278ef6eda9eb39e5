"""Process identity that survives pid reuse: (pid, start time in clock ticks since boot)."""
from __future__ import annotations

import os


def start_time(pid: int) -> int:
    """The kernel's start time of `pid` (field 22 of /proc/<pid>/stat), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def alive(pid: int, started: int) -> bool:
    """True while the process `pid` that started at `started` runs (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0] != b"Z" and (started == 0 or int(fields[19]) == started)


def me() -> tuple[int, int]:
    pid = os.getpid()
    return pid, start_time(pid)


def descendants(root: int) -> set[int]:
    """Live (non-zombie) descendants of process `root`, from /proc."""
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
