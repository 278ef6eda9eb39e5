"""The parameter server role: apply committed slots to the weights, publish, free the slot.

One update of learner i's slot holding sequence number k (docs/protocol.md)::

    P1  pick    a READY slot of learner i with the smallest seq k > applied[i]
    R   reuse   a weight buffer b for version v + 1: mark b REUSE, then scan the learners'
                pins; a pinned b is left alone and another tried (docs/protocol.md)
    P2  compute W', S' = rule(W, S, g) into b and header (v + 1) % 3, the ledger with
                applied[i] = k into that header; b's mark = v + 1, WMAP[(v + 1) % 3] = b
    P3  publish store PUB = v + 1                        <- the commit point
    P4  release store slot = (FREE, k)

A PS killed before P3 leaves the published state untouched and the slot READY: the next PS
applies it. Killed between P3 and P4, the slot is READY with k <= applied[i]: `recover` frees it.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch

from algorithms.rule import apply_delta, mean
from gadei import arena as A
from gadei import faults, proc, shm


def finite(x: np.ndarray) -> bool:
    """No NaN or Inf in `x` (one read of its own: for the rare paths, and for a rule that does
    not check its gradient; the min and max of a vector with a NaN are NaN)."""
    lo, hi = torch.aminmax(torch.from_numpy(x))
    return math.isfinite(lo.item()) and math.isfinite(hi.item())


class Server:
    """The PS over an attached arena. `recover()` first, then `step()` until there is no work.

    The three phases of an update are separate methods so that tests can stop (crash) a PS
    between any two of them.
    """

    def __init__(self, arena: A.Arena, rule, warn=None, sync_timeout: float | None = None, lr_at=None):
        self.arena, self.rule = arena, rule
        self.lr_at = lr_at                     # None, or the rule's lr as a function of updates applied
        self.sync_timeout = sync_timeout       # None: ASGD (apply each slot); else SYNC rounds
        self._round_start = None
        self._dropped: list[int] = []
        self._scratch = None
        self.learners, self.slots = arena.layout.learners, arena.layout.slots
        self._ctrl = [[arena.sw(i, s, A.S_CTRL) for s in range(self.slots)] for i in range(self.learners)]
        self._next = 0              # round-robin start, so no learner starves
        self._pending = None        # (i, s, k) computed into the unpublished buffer
        self._warned: set[int] = set()
        self._warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.recover()

    def recover(self) -> None:
        """Adopt the published state, clear the marks of the other weight buffers (a dead PS's
        REUSE, or a version it wrote and never published: neither is read as valid, but a
        clean slate keeps `gadei inspect` honest), and free slots whose update was published
        already."""
        self.version = self.arena.job.published
        self.cur = self.arena.buffer_of(self.version)
        for b in range(self.arena.layout.weight_buffers):
            if b != self.cur:
                self.arena.set_mark(b, A.REUSE)
        self.ledger = self.arena.read_ledger(self.version % A.BUFFERS)
        self._pending = None
        for i in range(self.learners):
            for s in range(self.slots):
                w = self.arena.slot_header(i, s).ctrl
                if A.ctrl_state(w) == A.READY and A.ctrl_seq(w) <= self.ledger.amax(i):
                    self.arena.slot_header(i, s).ctrl = A.ctrl(A.FREE, A.ctrl_seq(w))

    # ---- P1 ------------------------------------------------------------------------------
    def _scan(self, i: int) -> tuple[int, int] | None:
        """One pass over learner i's slots: (slot, seq) of the smallest READY seq > applied."""
        best, load = None, self.arena.ctl.load
        for s, at in enumerate(self._ctrl[i]):
            w = load(at)
            if A.ctrl_state(w) != A.READY:
                continue
            k = A.ctrl_seq(w)
            if k <= self.ledger.amax(i):
                # applied already (a PS died between publish and release): finish the release
                self.arena.slot_header(i, s).ctrl = A.ctrl(A.FREE, k)
            elif best is None or k < best[1]:
                best = (s, k)
        return best

    def ready(self, i: int) -> tuple[int, int] | None:
        """(slot, seq) of learner i's next update to apply, or None.

        One pass is not enough: the slots are read one at a time, so a pass can miss seq k in
        slot 0 (still WRITING when read) and then find k + 1 in slot 1 (committed after k).
        Applying k + 1 would then mark k as applied and lose it. A learner claims a slot for
        k + 1 only after committing k, and only the PS frees a READY slot, so a second pass,
        begun after the first saw k + 1, sees k READY: the second pass gives the true next.
        """
        if self._scan(i) is None:
            return None
        return self._scan(i)

    def pick(self) -> tuple[int, int, int] | None:
        """The next (learner, slot, seq) to apply, round-robin over learners."""
        for d in range(self.learners):
            i = (self._next + d) % self.learners
            found = self.ready(i)
            if found:
                self._next = i + 1
                return (i, *found)
        return None

    def pick_round(self) -> list[tuple[int, int, int]] | None:
        """SYNC: one READY gradient of every live learner, or of those that came within the
        round timeout (the others drop out of this round and the ledger counts it)."""
        have = {}
        for i in range(self.learners):
            found = self.ready(i)
            if found:
                have[i] = found
        if not have:
            self._round_start = None
            return None
        now = time.monotonic()
        if self._round_start is None:
            self._round_start = now
        missing = [i for i in range(self.learners) if i not in have and self.live(i)]
        if missing and now - self._round_start < self.sync_timeout:
            return None
        self._round_start = None
        self._dropped = missing
        return [(i, s, k) for i, (s, k) in sorted(have.items())]

    def live(self, i: int) -> bool:
        """Learner i is running and has work left (a dead one is being replaced)."""
        lw = self.arena.learner(i)
        return not lw.done and proc.alive(lw.pid, lw.start)

    # ---- P2 ------------------------------------------------------------------------------
    def compute(self, *picks: tuple[int, int, int]) -> None:
        """Write version v+1 (weights, state, ledger) into the unpublished buffer, from one
        committed slot (ASGD) or a round of them (SYNC: their gradients averaged).

        The payload is checked for NaN/Inf inside the pass that applies it (the rule's kernel
        checks each gradient element as it reads it), so validation costs no pass over memory
        of its own. A non-finite payload abandons what was written: version v+1 then carries
        the weights and state of v unchanged, and the ledger records the seq as rejected."""
        arena, v = self.arena, self.version
        src, dst = v % A.BUFFERS, (v + 1) % A.BUFFERS
        wb = self.reuse()
        w_src, w_dst = arena.weights(self.cur), arena.weights(wb)
        s_src, s_dst = arena.state(src), arena.state(dst)
        # Changed in place: if this process dies before publishing, the next PS re-reads the
        # published ledger, and until then nothing reads this one but us.
        ledger = self.ledger
        slots = {(i, s): arena.slot(i, s) for i, s, _ in picks}
        # the slots' meta: plain reads, ordered after the acquire loads that saw them READY
        meta = {(i, s): arena.slot_meta(i, s).tolist() for i, s, _ in picks}
        bad: set = set()
        grad = None
        if len(picks) > 1:
            grad, bad = self._checked_mean(slots)
        good = [(i, s, k) for i, s, k in picks if (i, s) not in bad]
        if self.lr_at is not None:
            self.rule.lr = self.lr_at(ledger.updates)
        if grad is not None:
            self.rule.apply(w_src, grad, s_src, out_weights=w_dst, out_state=s_dst)
        elif len(good) == 1:
            i, s, _ = good[0]
            delta = meta[i, s][A.S_KIND] == A.DELTA
            if not self._checked_apply(w_src, slots[i, s], s_src, w_dst, s_dst, delta):
                bad.add((i, s))
                good = []
        if not good:
            # nothing applied: the weights and state carry over unchanged
            np.copyto(w_dst, w_src)
            for key in s_src:
                np.copyto(s_dst[key], s_src[key])
        for i, s, k in picks:
            m = meta[i, s]
            ok = (i, s) not in bad
            if not ok and i not in self._warned:
                self._warned.add(i)
                self._warn(f"gadei: learner {i} pushed a non-finite update (seq {k}); rejected, "
                           "and further ones are counted in the ledger. Lower the learning rate "
                           "or check the loss for NaN/Inf.")
            ledger.note(i, k, ok, stale=max(0, v - m[A.S_VERSION]), step=m[A.S_STEP],
                        epoch=m[A.S_DATA_EPOCH], samples=m[A.S_SAMPLES])
        for i in self._dropped:
            ledger.drop(i)
        self._dropped = []
        arena.write_ledger(dst, ledger)
        # b's mark and WMAP: no reader takes version v + 1 before P3 publishes it
        arena.set_mark(wb, v + 1)
        arena.set_buffer_of(v + 1, wb)
        self._staged = (ledger, wb)
        self._pending = list(picks)

    def reuse(self) -> int:
        """R: a weight buffer to write version v + 1 into: not the published one, not pinned.

        The PS's half of the hazard-pointer handshake (docs/protocol.md, "Zero-copy pull"):
        store b's mark = REUSE, then load every learner's PIN, both seq_cst. A learner stores
        its PIN, then loads the mark, both seq_cst: either the learner sees REUSE (and pins
        again) or the PS sees the pin (and tries another buffer); never neither. Marking
        before scanning is the order that matters (the model's -DBUG_SCAN_FIRST). Oldest
        first, so with nothing pinned the buffers rotate (a copying pull has two update
        periods); N learners pin at most N buffers, so with N + 2 one is always free."""
        arena, K = self.arena, self.arena.layout.weight_buffers
        age = {b: -1 if (m := arena.mark(b)) == A.REUSE else m for b in range(K) if b != self.cur}
        order = sorted(age, key=age.get)
        while True:
            for b in order:
                arena.set_mark(b, A.REUSE, fence=True)      # R1: mark
                faults.point("ps_marked", "ps", self.version + 1)
                if b not in arena.pins():                   # R2: scan
                    return b
            # every candidate pinned: only while a learner pins a stale version, or holds a
            # pin with fewer than N + 2 buffers (the job then copies and pins nothing)
            time.sleep(20e-6)

    def _checked_apply(self, w_src, g, s_src, w_dst, s_dst, delta: bool) -> bool:
        """w_dst, s_dst = rule(w_src, s_src, g) (or w_src + g for a DELTA) in one pass that also
        checks g for NaN/Inf (algorithms/rule.py, Note [single-pass kernels]); False when g is
        not finite (what was written is then discarded by the caller)."""
        if delta:
            if not apply_delta(w_src, g, w_dst):
                return False
            for key in s_src:
                np.copyto(s_dst[key], s_src[key])
            return True
        ok = self.rule.apply(w_src, g, s_src, out_weights=w_dst, out_state=s_dst)
        return finite(g) if ok is None else ok      # None: a rule that does not check g

    def _checked_mean(self, slots: dict) -> tuple[np.ndarray | None, set]:
        """SYNC: the mean of the round's gradients, in one pass that also checks them for NaN/Inf;
        (mean, the non-finite ones), or (None, ...) when fewer than two are finite (one is then
        applied as it is). When one is not finite (the rare path), each is checked on its own
        and the mean taken again without the bad ones."""
        if self._scratch is None:
            self._scratch = np.empty(self.arena.layout.n, np.float32)
        if mean(self._scratch, list(slots.values())):
            return self._scratch, set()
        bad = {key for key, x in slots.items() if not finite(x)}
        live = [x for key, x in slots.items() if key not in bad]
        if len(live) < 2:
            return None, bad
        mean(self._scratch, live)
        return self._scratch, bad

    # ---- P3 ------------------------------------------------------------------------------
    def publish(self) -> None:
        self.arena.job.published = self.version + 1
        self.version += 1
        self.ledger, self.cur = self._staged

    # ---- P4 ------------------------------------------------------------------------------
    def release(self) -> None:
        for i, s, k in self._pending:
            self.arena.slot_header(i, s).ctrl = A.ctrl(A.FREE, k)
        self._pending = None

    def step(self) -> bool:
        """Apply one committed slot (SYNC: one round) if there is one; False when there is none."""
        picks = self.pick_round() if self.sync_timeout else [self.pick()]
        if not picks or picks[0] is None:
            return False
        self.compute(*picks)
        faults.point("ps_computed", "ps", self.version + 1)
        self.publish()
        faults.point("ps_published", "ps", self.version)
        self.release()
        return True

    # ---- the process ---------------------------------------------------------------------
    def run(self) -> None:
        """Serve until PS_STOP is set, nothing is left to apply and the supervisor has removed
        the arena's name, or until the job's owner is gone; never waits on a learner."""
        pid, started = proc.me()
        self.arena.job.ps_pid = pid
        self.arena.job.ps_start = started
        owner = (self.arena.job.owner_pid, self.arena.job.owner_start)
        idle, beat, checked, busy = 0.0, 0, 0.0, 0
        while True:
            t = A.now_ns()
            if t - beat > 5_000_000:
                self.arena.job.ps_beat = t
                beat = t
            t0 = time.perf_counter_ns()
            if self.step():
                busy += time.perf_counter_ns() - t0
                if t - beat > 5_000_000 or busy > 100_000_000:
                    self.arena.job.ps_busy_ns = self.arena.job.ps_busy_ns + busy
                    busy = 0
                idle = 0.0
                continue
            if busy:
                self.arena.job.ps_busy_ns = self.arena.job.ps_busy_ns + busy
                busy = 0
            # stopping: linger until the supervisor removes the arena's name, so a supervisor
            # killed between our exit and its unlink cannot leave the arena behind
            if self.arena.job.ps_stop and not shm.exists(self.arena.name):
                return
            now = time.monotonic()
            if now - checked > 0.5:
                checked = now
                if not proc.alive(*owner):
                    self._warn(f"gadei: the job's supervisor (pid {owner[0]}) is gone; the PS stops "
                               "and removes the arena")
                    self.arena.unlink()
                    return
            # back off from 50 us to 2 ms: no core is burnt waiting for learners
            idle = min(0.002, idle * 2 or 50e-6)
            time.sleep(idle)
