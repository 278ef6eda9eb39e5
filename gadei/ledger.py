"""The ledger: per learner, which sequence numbers were committed, applied, discarded, rejected.

Two parts, one type:

- the PS's part, published with every version of the weights (`published_empty`, `note`):
  per learner the applied ranges, the rejected numbers, the highest number applied or
  rejected (`amax`) and the learner's progress as of it, plus job totals;
- the supervisor's part: per learner the numbers discarded (begun, never committed: the
  learner died writing), where its numbers continue (`next_seq`) and its incarnations.

`Ledger` joins them. It has one cut rule (`cut`: what a checkpoint keeps), one resume rule
(`from_checkpoint`), one summary form (`summary`, the schema of docs/protocol.md) and one wire
form (`wire` / `from_wire`, what a node leader sends the global PS under MPI). Sequence numbers
are written as inclusive ``[first, last]`` ranges.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterable

TOTALS = ("updates", "rejects", "stale_sum", "stale_max")


# ---- ranges --------------------------------------------------------------------------------
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


# ---- the PS's part -------------------------------------------------------------------------
def published_empty(learners: int) -> dict:
    """The PS's part of a fresh job, as published with every version."""
    return {"applied": [[] for _ in range(learners)], "rejected": [[] for _ in range(learners)],
            "amax": [-1] * learners, "progress": [[0, 0, 0] for _ in range(learners)],
            "dropped": [0] * learners, "updates": 0, "rejects": 0, "stale_sum": 0, "stale_max": 0,
            "last_norm": 0.0}


def note(pub: dict, i: int, k: int, applied: bool, *, stale: int, norm: float, step: int, epoch: int,
         samples: int) -> None:
    """Record in the PS's part that learner i's seq k was applied (or rejected), in place."""
    if applied:
        add(pub["applied"][i], k)
        pub["updates"] += 1
        pub["stale_sum"] += stale
        pub["stale_max"] = max(pub["stale_max"], stale)
        pub["last_norm"] = norm
    else:
        pub["rejected"][i].append(k)
        pub["rejects"] += 1
    pub["amax"][i] = k
    pub["progress"][i] = [step, epoch, pub["progress"][i][2] + samples]


# ---- one learner's record, and the whole ledger --------------------------------------------
@dataclass
class Record:
    """One learner's account (its id is its key in `Ledger.records`)."""
    applied: list = field(default_factory=list)      # ranges
    rejected: list = field(default_factory=list)
    amax: int = -1                                   # highest seq applied or rejected
    progress: list = field(default_factory=lambda: [0, 0, 0])   # [step, data epoch, samples] at amax
    dropped: int = 0                                 # SYNC rounds it missed
    discarded: list = field(default_factory=list)
    next_seq: int = 0                                # where its numbers continue
    incarnations: int = 1

    def cut(self) -> "Record":
        """The record as of its last applied or rejected seq. Committed but unapplied gradients
        live only in shared memory, so a job resumed from a checkpoint continues each learner
        right after `amax`."""
        nxt = self.amax + 1
        return dataclasses.replace(self, next_seq=nxt, discarded=sorted(k for k in self.discarded if k < nxt))

    def summary(self) -> dict:
        return {"committed": committed(max(self.next_seq, self.amax + 1), self.discarded),
                "applied": self.applied, "discarded": sorted(self.discarded),
                "rejected": self.rejected, "incarnations": self.incarnations}


@dataclass
class Ledger:
    """Every learner's record (by learner id: the arena's index, or the global id under MPI)
    and the job's totals (updates applied, rejected, staleness)."""
    records: dict[int, Record]
    updates: int = 0
    rejects: int = 0
    stale_sum: int = 0
    stale_max: int = 0

    @classmethod
    def join(cls, pub: dict, discarded: list[list[int]], incarnations: list[int],
             next_seq: list[int]) -> "Ledger":
        """The PS's published part joined with the supervisor's (all indexed by learner)."""
        records = {i: Record(applied=pub["applied"][i], rejected=pub["rejected"][i], amax=pub["amax"][i],
                             progress=list(pub["progress"][i]), dropped=pub["dropped"][i],
                             discarded=sorted(discarded[i]), next_seq=max(next_seq[i], pub["amax"][i] + 1),
                             incarnations=incarnations[i])
                   for i in range(len(pub["amax"]))}
        return cls(records, **{k: pub[k] for k in TOTALS})

    def cut(self) -> "Ledger":
        return dataclasses.replace(self, records={i: r.cut() for i, r in self.records.items()})

    def published(self) -> dict:
        """The PS's part (learner ids 0..n-1), to start an arena from."""
        pub = published_empty(len(self.records))
        for i, r in enumerate(self.ordered()):
            pub["applied"][i], pub["rejected"][i], pub["amax"][i] = r.applied, r.rejected, r.amax
            pub["progress"][i], pub["dropped"][i] = list(r.progress), r.dropped
        pub.update({k: getattr(self, k) for k in TOTALS})
        return pub

    def ordered(self) -> list[Record]:
        return [self.records[i] for i in sorted(self.records)]

    @property
    def applied(self) -> int:
        """Sequence numbers applied, over every learner."""
        return sum(count(r.applied) for r in self.records.values())

    @property
    def samples(self) -> int:
        return sum(r.progress[2] for r in self.records.values())

    def summary(self) -> dict:
        """summary.json's "ledger": learner id (a string) -> committed, applied, discarded,
        rejected, incarnations."""
        return {str(i): r.summary() for i, r in sorted(self.records.items())}

    # ---- checkpoints (the format of every checkpoint so far) -----------------------------
    def to_checkpoint(self) -> dict:
        """The checkpoint meta's "ledger" and "learner_records" (after `cut`)."""
        recs = [{"next_seq": r.next_seq, "discarded": r.discarded, "step": r.progress[0],
                 "epoch": r.progress[1], "incarnations": r.incarnations} for r in self.ordered()]
        return {"ledger": self.published(), "learner_records": recs}

    @classmethod
    def from_checkpoint(cls, meta: dict) -> "Ledger":
        """The ledger a checkpoint's meta holds (learner ids 0..n-1)."""
        try:
            pub, recs = meta["ledger"], meta["learner_records"]
            return cls.join(pub, [r["discarded"] for r in recs], [r["incarnations"] for r in recs],
                            [r["next_seq"] for r in recs])
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"the checkpoint holds no readable ledger ({type(e).__name__}: {e})") from None

    # ---- subsets: one node's learners, and their union ------------------------------------
    def only(self, ids: list[int], renumber: bool = False, totals: bool = True) -> "Ledger":
        """The records of learners `ids` (numbered 0, 1, ... in that order if `renumber`), with
        the totals or without."""
        records = {(n if renumber else g): self.records[g] for n, g in enumerate(ids)}
        return Ledger(records, **({k: getattr(self, k) for k in TOTALS} if totals else {}))

    @classmethod
    def union(cls, parts: list["Ledger"], learners: int) -> "Ledger":
        """The parts' records (a learner missing from all: a fresh record) and summed totals."""
        records = {g: Record() for g in range(learners)}
        out = cls(records)
        for part in parts:
            records.update(part.records)
            for k in TOTALS[:3]:
                setattr(out, k, getattr(out, k) + getattr(part, k))
            out.stale_max = max(out.stale_max, part.stale_max)
        return out

    # ---- the wire form (MPI: what a node leader's sync carries; gadei/mpi/wire.py checks it) --
    def wire(self) -> tuple[dict, dict]:
        """(records by learner id as a string, totals)."""
        return ({str(i): dataclasses.asdict(r) for i, r in self.records.items()},
                {k: getattr(self, k) for k in TOTALS})

    @classmethod
    def from_wire(cls, records: dict, totals: dict) -> "Ledger":
        return cls({int(i): Record(**r) for i, r in records.items()}, **{k: totals[k] for k in TOTALS})


# the wire form's types, for the validation of received messages
WIRE_RECORD = {f.name: str(f.type) for f in dataclasses.fields(Record)}


def audit(entry: dict) -> list[str]:
    """Exactly-once violations in one learner's summary entry (empty list if none)."""
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
