"""The ledger: per learner, which sequence numbers were committed, applied, discarded, rejected.

Sequence numbers are written as inclusive ``[first, last]`` ranges (DESIGN.md section 7).
"""
from __future__ import annotations

from typing import Iterable


def add(ranges: list[list[int]], k: int) -> None:
    """Append `k` (larger than anything in `ranges`) to a sorted range list, in place."""
    if ranges and ranges[-1][1] + 1 == k:
        ranges[-1][1] = k
    elif ranges and k <= ranges[-1][1]:
        raise ValueError(f"sequence number {k} is not above {ranges[-1][1]}")
    else:
        ranges.append([k, k])


def to_ranges(seqs: Iterable[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for k in sorted(set(seqs)):
        add(out, k)
    return out


def expand(ranges: Iterable[Iterable[int]]) -> list[int]:
    return [k for a, b in ranges for k in range(a, b + 1)]


def count(ranges: Iterable[Iterable[int]]) -> int:
    return sum(b - a + 1 for a, b in ranges)


def committed(next_seq: int, discarded: Iterable[int]) -> list[list[int]]:
    """Committed = every sequence number handed out, [0, next_seq), except the discarded ones.

    The protocol keeps sequence numbers dense: each number a learner claims either reaches
    READY (committed) or is found WRITING after the learner died (discarded).
    """
    gone = set(discarded)
    return to_ranges(k for k in range(next_seq) if k not in gone)


def audit(entry: dict) -> list[str]:
    """Exactly-once violations in one learner's ledger entry (empty list if none)."""
    c, a = set(expand(entry["committed"])), set(expand(entry["applied"]))
    r, d = set(entry["rejected"]), set(entry["discarded"])
    problems = []
    if a | r != c:
        if c - a - r:
            problems.append(f"committed but never applied: {to_ranges(c - a - r)}")
        if (a | r) - c:
            problems.append(f"applied or rejected but never committed: {to_ranges((a | r) - c)}")
    if a & r:
        problems.append(f"both applied and rejected: {sorted(a & r)}")
    if d & (a | r):
        problems.append(f"discarded yet applied: {sorted(d & (a | r))}")
    if count(entry["applied"]) != len(a):
        problems.append("a sequence number appears twice in applied")
    return problems
