"""The protocol as a state machine: learners, the PS and crashes at every protocol point.

hypothesis drives the real arena (real shared memory, the real Server and Worker code) one
protocol step at a time, with crash steps between any two of them, next to a plain-Python
model of what must hold:

- exactly-once: the published weights are always minus the sum of the probe gradients the
  published ledger says were applied; every sequence number is applied at most once; a
  discarded one never; after draining, every committed one exactly once;
- progress: whenever work exists, some live actor has an enabled step (no deadlock);
- no torn read: a learner's validated pin (the zero-copy pull, split into its two steps so
  that the PS can run between them) names a weight buffer that keeps the version it pinned
  until the pin is replaced or cleared, whatever the PS does (reuse, crash between its mark
  and its scan of the pins).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import settings, HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import algorithms
from gadei import arena as A
from gadei import ledger as L
from gadei.ledger import published_empty
from gadei.server import Server
from gadei.supervisor import discard_writing
from gadei.worker import Worker
from gadei.probe import gradient

SIZE = 8
LEARNERS = 3
pytestmark = pytest.mark.timeout(600)


def make_arena(learners=LEARNERS, slots=2) -> A.Arena:
    layout = A.Layout(params=(("w", (SIZE,)),), state=(), rule="sgd", hyper=(("lr", 1.0),),
                      learners=learners, slots=slots, weight_buffers=learners + 2)
    a = A.Arena.create("test-sm", layout, {"config": {}})
    a.write_ledger(0, published_empty(learners))
    return a


class ProtocolMachine(RuleBasedStateMachine):
    """One arena, LEARNERS learners, one PS; every rule is one protocol step or one crash."""

    @initialize()
    def setup(self):
        self.arena = make_arena()
        self.rule = algorithms.get("sgd", lr=1.0)
        self.ps = Server(self.arena, self.rule, warn=lambda m: None)
        self.ps_phase = "idle"                     # idle -> computed -> published -> idle
        self.workers = [Worker(self.arena, i) for i in range(LEARNERS)]
        self.phase = ["idle"] * LEARNERS           # idle -> claimed -> written -> idle
        self.slot = [None] * LEARNERS
        self.committed = [set() for _ in range(LEARNERS)]
        self.discarded = [set() for _ in range(LEARNERS)]
        self.announced = [None] * LEARNERS         # (version, buffer) stored in PIN, not validated
        self.pinned = [None] * LEARNERS            # (version, buffer, the weights it validated)

    def teardown(self):
        if hasattr(self, "arena"):
            self.workers = self.ps = None
            self.arena.unlink()
            self.arena.close()

    # ---- learners -------------------------------------------------------------------
    def free_slot(self, i):
        return any(A.ctrl_state(self.arena.slot_header(i, s).ctrl) == A.FREE
                   for s in range(self.arena.layout.slots))

    @rule(i=st.integers(0, LEARNERS - 1))
    def learner_claim(self, i):
        if self.phase[i] != "idle" or not self.free_slot(i):
            return      # L1: it would wait; only the PS can enable it
        self.slot[i] = self.workers[i].claim()
        self.phase[i] = "claimed"

    @precondition(lambda self: "claimed" in self.phase)
    @rule(data=st.data())
    def learner_write(self, data):
        i = data.draw(st.sampled_from([j for j, p in enumerate(self.phase) if p == "claimed"]))
        w = self.workers[i]
        w.write(self.slot[i], torch.from_numpy(gradient(i, w.next_seq, SIZE)))
        self.phase[i] = "written"

    @precondition(lambda self: "written" in self.phase)
    @rule(data=st.data())
    def learner_commit(self, data):
        i = data.draw(st.sampled_from([j for j, p in enumerate(self.phase) if p == "written"]))
        k = self.workers[i].commit(self.slot[i], A.GRADIENT, samples=1)
        self.committed[i].add(k)
        self.phase[i] = "idle"

    # the zero-copy pull (Arena.pin), one step per rule: U1-U3 announce, U4 validate
    @rule(i=st.integers(0, LEARNERS - 1))
    def learner_announce(self, i):
        a = self.arena
        v = a.job.published
        b = a.buffer_of(v)
        a.ctl.store(a.lw(i, A.L_PIN), A.pin_word(v, b), fence=True)   # replaces its pin
        self.pinned[i] = None
        self.announced[i] = (v, b)

    @precondition(lambda self: any(self.announced))
    @rule(data=st.data())
    def learner_validate(self, data):
        i = data.draw(st.sampled_from([j for j, x in enumerate(self.announced) if x]))
        v, b = self.announced[i]
        self.announced[i] = None
        if self.arena.mark(b, fence=True) == v:        # else: it would pin again
            w = self.arena.weights(b).copy()
            if v == self.arena.job.published:
                np.testing.assert_array_equal(w, self.arena.published_weights())
            self.pinned[i] = (v, b, w)

    @rule(i=st.integers(0, LEARNERS - 1))
    def learner_crash(self, i):
        """kill -9 at any point, then what the supervisor does: reap, discard (and unpin), restart."""
        self.announced[i] = self.pinned[i] = None
        for k in discard_writing(self.arena, i):
            assert k not in self.committed[i]
            self.discarded[i].add(k)
        self.arena.ctl.store(self.arena.lw(i, A.L_INCARNATION),
                             self.arena.learner(i).incarnation + 1)
        self.workers[i] = Worker(self.arena, i)
        used = self.committed[i] | self.discarded[i]
        assert self.workers[i].next_seq > max(used, default=-1), "a restart reuses a sequence number"
        self.phase[i] = "idle"

    @rule(i=st.integers(0, LEARNERS - 1))
    def learner_pull(self, i):
        out = np.empty(SIZE, np.float32)
        v, _ = self.arena.pull(out)
        assert v == self.arena.job.published or self.ps_phase != "idle"
        np.testing.assert_array_equal(out, self.arena.published_weights() if v == self.arena.job.published
                                      else self.arena.weights(self.arena.buffer_of(v)))

    # ---- the PS ---------------------------------------------------------------------
    @precondition(lambda self: self.ps_phase == "idle")
    @rule()
    def ps_compute(self):
        picked = self.ps.pick()
        if picked is not None:
            self.ps.compute(picked)
            self.ps_phase = "computed"

    @precondition(lambda self: self.ps_phase == "computed")
    @rule()
    def ps_publish(self):
        self.ps.publish()
        self.ps_phase = "published"

    @precondition(lambda self: self.ps_phase == "published")
    @rule()
    def ps_release(self):
        self.ps.release()
        self.ps_phase = "idle"

    @rule()
    def ps_crash(self):
        """kill -9 at any point; a new PS attaches and recovers from the published state."""
        self.ps = Server(self.arena, self.rule, warn=lambda m: None)
        self.ps_phase = "idle"

    @precondition(lambda self: self.ps_phase == "idle")
    @rule(data=st.data())
    def ps_crash_between_mark_and_scan(self, data):
        """kill -9 after the PS marked a buffer REUSE (R1), before its scan of the pins (R2)."""
        a = self.arena
        cur = a.buffer_of(a.job.published)
        b = data.draw(st.sampled_from([b for b in range(a.layout.weight_buffers) if b != cur]))
        a.set_mark(b, A.REUSE, fence=True)
        self.ps_crash()

    # ---- what must hold -------------------------------------------------------------
    def published_ledger(self) -> L.Ledger:
        """The published ledger joined with the discarded numbers (the supervisor's part)."""
        pub = self.arena.read_ledger(self.arena.job.published % A.BUFFERS)   # the header
        return L.Ledger.join(pub, [sorted(d) for d in self.discarded], [1] * LEARNERS, [0] * LEARNERS)

    @invariant()
    def exactly_once_so_far(self):
        if not hasattr(self, "arena"):
            return
        ledger = self.published_ledger()
        want = np.zeros(SIZE, np.float32)
        for i in range(LEARNERS):
            applied = L.expand(ledger.records[i].applied)
            assert ledger.records[i].n_applied == len(applied), f"learner {i}: applied count differs"
            assert set(applied) <= self.committed[i], f"learner {i}: applied an uncommitted gradient"
            assert not set(applied) & self.discarded[i]
            for k in applied:
                want -= gradient(i, k, SIZE)
        np.testing.assert_array_equal(self.arena.published_weights(), want)

    @invariant()
    def no_torn_read(self):
        """A validated pin's buffer still holds what the learner validated, and it is pinned."""
        if not hasattr(self, "arena"):
            return
        for i, p in enumerate(self.pinned):
            if p:
                v, b, w = p
                assert self.arena.pins()[i] == b
                np.testing.assert_array_equal(self.arena.weights(b), w,
                                              err_msg=f"learner {i}: pinned buffer {b} (version {v}) changed")

    @invariant()
    def someone_can_move(self):
        """No deadlock: while a committed gradient waits, the PS has a step; a learner that
        waits for a slot waits only on READY slots, which the PS will free."""
        if not hasattr(self, "arena"):
            return
        a = self.arena
        for i in range(LEARNERS):
            states = [A.ctrl_state(a.slot_header(i, s).ctrl) for s in range(a.layout.slots)]
            if self.phase[i] == "idle" and A.FREE not in states:
                assert A.READY in states, f"learner {i} waits on slots nobody will free: {states}"

    def drain(self):
        """Let the PS finish everything committed; then committed == applied, exactly once."""
        if self.ps_phase == "computed":
            self.ps.publish()
        if self.ps_phase in ("computed", "published"):
            self.ps.release()
        self.ps_phase = "idle"
        while self.ps.step():
            pass
        ledger = self.published_ledger()
        for i in range(LEARNERS):
            assert set(L.expand(ledger.records[i].applied)) == self.committed[i]
            assert ledger.records[i].n_applied == len(self.committed[i])

    @rule()
    def drain_and_check(self):
        self.drain()


ProtocolMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=60, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
test_protocol = ProtocolMachine.TestCase


def test_torn_pull_is_retried_not_returned():
    """A pull whose buffer was rewritten during the copy must retry (the seqlock check)."""
    a = make_arena(learners=1)
    try:
        out = np.empty(SIZE, np.float32)
        calls = {"n": 0}
        real = a.ctl.load

        def load(i, fence=False):
            # the second read of PUB in the first attempt sees two publishes happened
            if i == A.PUB and fence and calls["n"] == 0:
                calls["n"] += 1
                return real(i) + 2
            return real(i, fence)

        a.ctl.load = load
        v, _ = a.pull(out)
        assert calls["n"] == 1 and v == 0
    finally:
        a.unlink()
        a.close()
