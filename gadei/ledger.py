"""The ledger: per learner, which sequence numbers were committed, applied, discarded, rejected.

Two parts, one type:

- the PS's part, published with every version of the weights (`Tally`): fixed int64 fields
  in the buffer's header, so an update writes a few words and the part never grows. Per learner
  the highest number applied or rejected (`amax`), how many were applied and how many rejected,
  the most recent rejected numbers (a window of `WINDOW`), the window's horizon (rejected
  numbers at or below it are counted only) and the learner's progress as of `amax`; plus job
  totals;
- the supervisor's part: per learner the numbers discarded (begun, never committed: the
  learner died writing), where its numbers continue (`next_seq`) and its incarnations.

Why counts and a window suffice: the PS takes each learner's committed numbers in order
(docs/protocol.md, invariants 2 and 4), so every number up to `amax` was applied, rejected or
discarded, and the applied ones are `[0, amax]` minus the other two. Listing every rejected
number would make the part grow without bound (a NaN every other step splits the applied
ranges at every update); instead the window keeps the last `WINDOW` of them exactly and the
older ones are counted. The counts are the audit's independent witness: applied + rejected must
equal the committed numbers, so an update applied twice into the ledger or skipped shows.

`Ledger` joins the two parts. It has one cut rule (`cut`: what a checkpoint keeps), one resume
rule (`from_checkpoint`, which reads every checkpoint format so far), one summary form
(`summary`, the schema of docs/protocol.md) and one wire form (`wire` / `from_wire`, what a node
leader sends the global PS under MPI). Sequence numbers are written as inclusive
``[first, last]`` ranges.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

TOTALS = ("updates", "rejects", "stale_sum", "stale_max")
WINDOW = 64     # rejected numbers kept exactly per learner; older ones are counted only


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


def span(first: int, last: int, holes: Iterable[int]) -> list[list[int]]:
    """[first, last] minus `holes`, as ranges (in time linear in the holes, not the span)."""
    out, at = [], first
    for h in sorted(set(holes)):
        if h < at or h > last:
            continue
        if h > at:
            out.append([at, h - 1])
        at = h + 1
    if at <= last:
        out.append([at, last])
    return out


def committed(next_seq: int, discarded: Iterable[int]) -> list[list[int]]:
    """Committed = every sequence number handed out, [0, next_seq), except the discarded ones.

    The protocol keeps sequence numbers dense: each number a learner claims either reaches
    READY (committed) or is found WRITING after the learner died (discarded).
    """
    return span(0, next_seq - 1, discarded)


# ---- the PS's part: fixed binary fields ------------------------------------------------------
# job words, then per learner FIELDS words and a ring of WINDOW rejected numbers
UPDATES, REJECTS, STALE_SUM, STALE_MAX = range(4)
JOB_WORDS = 8
AMAX, HORIZON, N_APPLIED, N_REJECTED, DROPPED, STEP, EPOCH, SAMPLES = range(8)
FIELDS = 8
LEARNER_WORDS = FIELDS + WINDOW


def words(learners: int) -> int:
    """Size of the PS's part in 64-bit words: fixed for a job, whatever its length."""
    return JOB_WORDS + learners * LEARNER_WORDS


class Tally:
    """The PS's part of the ledger: int64 words (`w`), laid out as above, in process memory
    or viewing a buffer header. `note` records one update in a handful of word stores."""

    def __init__(self, learners: int, w: np.ndarray | None = None):
        self.learners = learners
        if w is None:
            w = np.zeros(words(learners), np.int64)
            for i in range(learners):
                w[self._at(i, AMAX)] = w[self._at(i, HORIZON)] = -1
        elif w.dtype != np.int64 or w.shape != (words(learners),):
            raise ValueError(f"a ledger of {learners} learners is {words(learners)} int64 words")
        self.w = w

    @staticmethod
    def _at(i: int, f: int) -> int:
        return JOB_WORDS + i * LEARNER_WORDS + f

    def copy(self) -> "Tally":
        return Tally(self.learners, self.w.copy())

    # -- per learner
    def amax(self, i: int) -> int:
        """The highest sequence number of learner i applied or rejected (-1: none yet)."""
        return int(self.w[JOB_WORDS + i * LEARNER_WORDS + AMAX])

    def get(self, i: int, f: int) -> int:
        return int(self.w[self._at(i, f)])

    def rejected(self, i: int) -> list[int]:
        """Learner i's rejected numbers the window still holds (all above its horizon), sorted."""
        n = self.get(i, N_REJECTED)
        ring = JOB_WORDS + i * LEARNER_WORDS + FIELDS
        return [int(self.w[ring + j % WINDOW]) for j in range(max(0, n - WINDOW), n)]

    def progress(self, i: int) -> list[int]:
        return [self.get(i, STEP), self.get(i, EPOCH), self.get(i, SAMPLES)]

    # -- job totals
    def total(self, name: str) -> int:
        return int(self.w[TOTALS.index(name)])

    @property
    def updates(self) -> int:
        return int(self.w[UPDATES])

    # -- the PS's writes (P2)
    def note(self, i: int, k: int, applied: bool, *, stale: int, step: int, epoch: int,
             samples: int) -> None:
        """Record that learner i's seq k (above its amax) was applied or rejected, in place."""
        w, b = self.w, JOB_WORDS + i * LEARNER_WORDS
        if k <= w[b + AMAX]:
            raise ValueError(f"learner {i}: sequence number {k} is not above {int(w[b + AMAX])}")
        if applied:
            w[b + N_APPLIED] += 1
            w[UPDATES] += 1
            w[STALE_SUM] += stale
            if stale > w[STALE_MAX]:
                w[STALE_MAX] = stale
        else:
            n = int(w[b + N_REJECTED])
            slot = b + FIELDS + n % WINDOW
            if n >= WINDOW:
                w[b + HORIZON] = w[slot]        # the window forgets its oldest: counted only
            w[slot] = k
            w[b + N_REJECTED] = n + 1
            w[REJECTS] += 1
        w[b + AMAX] = k
        w[b + STEP], w[b + EPOCH] = step, epoch
        w[b + SAMPLES] += samples

    def drop(self, i: int) -> None:
        """Learner i missed a SYNC round."""
        self.w[self._at(i, DROPPED)] += 1


def published_empty(learners: int) -> Tally:
    """The PS's part of a fresh job, as published with every version."""
    return Tally(learners)


# ---- one learner's record, and the whole ledger --------------------------------------------
@dataclass
class Record:
    """One learner's account (its id is its key in `Ledger.records`)."""
    amax: int = -1                                   # highest seq applied or rejected
    horizon: int = -1                                # rejected seqs <= horizon are counted only
    n_applied: int = 0
    n_rejected: int = 0
    rejected: list = field(default_factory=list)     # the rejected seqs above the horizon
    progress: list = field(default_factory=lambda: [0, 0, 0])   # [step, data epoch, samples] at amax
    dropped: int = 0                                 # SYNC rounds it missed
    discarded: list = field(default_factory=list)
    next_seq: int = 0                                # where its numbers continue
    incarnations: int = 1

    @property
    def applied(self) -> list[list[int]]:
        """The applied seqs above the horizon, as ranges: up to amax, every seq neither
        discarded nor rejected (the PS takes a learner's committed seqs in order)."""
        return span(self.horizon + 1, self.amax, [*self.discarded, *self.rejected])

    def cut(self) -> "Record":
        """The record as of its last applied or rejected seq. Committed but unapplied gradients
        live only in shared memory, so a job resumed from a checkpoint continues each learner
        right after `amax`."""
        nxt = self.amax + 1
        return dataclasses.replace(self, next_seq=nxt, discarded=sorted(k for k in self.discarded if k < nxt))

    def summary(self) -> dict:
        return {"committed": committed(max(self.next_seq, self.amax + 1), self.discarded),
                "applied": self.applied, "discarded": sorted(self.discarded),
                "rejected": list(self.rejected), "incarnations": self.incarnations,
                "applied_count": self.n_applied, "rejected_count": self.n_rejected,
                "horizon": self.horizon}

    @classmethod
    def from_lists(cls, applied: list, rejected: list, **rest) -> "Record":
        """A record from the list form of checkpoints before format 3 (every applied range and
        every rejected seq): counted, and the window keeps the last WINDOW rejected seqs."""
        rejected = sorted(rejected)
        horizon = rejected[-WINDOW - 1] if len(rejected) > WINDOW else -1
        return cls(horizon=horizon, n_applied=count(applied), n_rejected=len(rejected),
                   rejected=rejected[-WINDOW:], **rest)


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
    def join(cls, pub: Tally, discarded: list[list[int]], incarnations: list[int],
             next_seq: list[int]) -> "Ledger":
        """The PS's published part joined with the supervisor's (all indexed by learner)."""
        records = {i: Record(amax=pub.amax(i), horizon=pub.get(i, HORIZON), n_applied=pub.get(i, N_APPLIED),
                             n_rejected=pub.get(i, N_REJECTED), rejected=pub.rejected(i),
                             progress=pub.progress(i), dropped=pub.get(i, DROPPED),
                             discarded=sorted(discarded[i]), next_seq=max(next_seq[i], pub.amax(i) + 1),
                             incarnations=incarnations[i])
                   for i in range(pub.learners)}
        return cls(records, **{k: pub.total(k) for k in TOTALS})

    def cut(self) -> "Ledger":
        return dataclasses.replace(self, records={i: r.cut() for i, r in self.records.items()})

    def published(self) -> Tally:
        """The PS's part (learner ids 0..n-1), to start an arena from."""
        pub = Tally(len(self.records))
        w = pub.w
        for i, r in enumerate(self.ordered()):
            if len(r.rejected) != min(r.n_rejected, WINDOW) or any(k <= r.horizon for k in r.rejected):
                raise ValueError(f"learner {i}: the record's rejected window is inconsistent")
            b = JOB_WORDS + i * LEARNER_WORDS
            w[b + AMAX], w[b + HORIZON], w[b + N_APPLIED], w[b + N_REJECTED] = \
                r.amax, r.horizon, r.n_applied, r.n_rejected
            w[b + DROPPED] = r.dropped
            w[b + STEP], w[b + EPOCH], w[b + SAMPLES] = r.progress
            for j, k in zip(range(r.n_rejected - len(r.rejected), r.n_rejected), r.rejected):
                w[b + FIELDS + j % WINDOW] = k
        for n, k in enumerate(TOTALS):
            w[n] = getattr(self, k)
        return pub

    def ordered(self) -> list[Record]:
        return [self.records[i] for i in sorted(self.records)]

    @property
    def applied(self) -> int:
        """Sequence numbers applied, over every learner."""
        return sum(r.n_applied for r in self.records.values())

    @property
    def rejected(self) -> int:
        """Sequence numbers rejected (non-finite), over every learner."""
        return sum(r.n_rejected for r in self.records.values())

    @property
    def samples(self) -> int:
        return sum(r.progress[2] for r in self.records.values())

    def summary(self) -> dict:
        """summary.json's "ledger": learner id (a string) -> committed, applied, discarded,
        rejected, incarnations, applied_count, rejected_count, horizon."""
        return {str(i): r.summary() for i, r in sorted(self.records.items())}

    # ---- checkpoints ---------------------------------------------------------------------
    def to_checkpoint(self) -> dict:
        """The checkpoint meta's "ledger" and "learner_records" (after `cut`). The list keys
        ("applied" ranges, "rejected") keep the form of earlier checkpoints (above the horizon);
        the counts and the horizon are what a resume reads."""
        recs = [{"next_seq": r.next_seq, "discarded": r.discarded, "step": r.progress[0],
                 "epoch": r.progress[1], "incarnations": r.incarnations} for r in self.ordered()]
        rs = self.ordered()
        pub = {"applied": [r.applied for r in rs], "rejected": [list(r.rejected) for r in rs],
               "amax": [r.amax for r in rs], "progress": [list(r.progress) for r in rs],
               "dropped": [r.dropped for r in rs], "horizon": [r.horizon for r in rs],
               "n_applied": [r.n_applied for r in rs], "n_rejected": [r.n_rejected for r in rs],
               **{k: getattr(self, k) for k in TOTALS}}
        return {"ledger": pub, "learner_records": recs}

    @classmethod
    def from_checkpoint(cls, meta: dict) -> "Ledger":
        """The ledger a checkpoint's meta holds (learner ids 0..n-1), in either form: counts and
        window (format 3), or every applied range and rejected seq (earlier checkpoints)."""
        try:
            pub, recs = meta["ledger"], meta["learner_records"]
            records = {}
            for i, r in enumerate(recs):
                rest = dict(amax=pub["amax"][i], progress=list(pub["progress"][i]), dropped=pub["dropped"][i],
                            discarded=sorted(r["discarded"]), next_seq=max(r["next_seq"], pub["amax"][i] + 1),
                            incarnations=r["incarnations"])
                if "n_applied" in pub:
                    records[i] = Record(horizon=pub["horizon"][i], n_applied=pub["n_applied"][i],
                                        n_rejected=pub["n_rejected"][i], rejected=list(pub["rejected"][i]), **rest)
                else:
                    records[i] = Record.from_lists(pub["applied"][i], pub["rejected"][i], **rest)
            return cls(records, **{k: pub[k] for k in TOTALS})
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


def applied_count(entry: dict) -> int:
    """Applied seqs of a summary entry (its count; summaries before format 3: its ranges)."""
    return entry["applied_count"] if "applied_count" in entry else count(entry["applied"])


def rejected_count(entry: dict) -> int:
    return entry["rejected_count"] if "rejected_count" in entry else len(entry["rejected"])


# the wire form's types, for the validation of received messages
WIRE_RECORD = {f.name: str(f.type) for f in dataclasses.fields(Record)}


def audit(entry: dict) -> list[str]:
    """Exactly-once violations in one learner's summary entry (empty list if none).

    Above the horizon the sets are checked (committed = applied + rejected, disjoint, nothing
    discarded applied); over the whole job the counts (applied + rejected = committed: a seq
    applied twice into the ledger, or skipped, breaks it). Entries without counts (summaries
    written before format 3) are checked by their sets alone."""
    h = entry.get("horizon", -1)
    c = {k for k in expand(entry["committed"]) if k > h}
    a = {k for k in expand(entry["applied"]) if k > h}
    r, d = {k for k in entry["rejected"] if k > h}, set(entry["discarded"])
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
    if count(entry["applied"]) != len(set(expand(entry["applied"]))):
        problems.append("a sequence number appears twice in applied")
    if "applied_count" in entry:
        n_c, n_a, n_r = count(entry["committed"]), entry["applied_count"], entry["rejected_count"]
        if n_a + n_r != n_c:
            problems.append(f"counts: {n_a} applied + {n_r} rejected != {n_c} committed")
    return problems
