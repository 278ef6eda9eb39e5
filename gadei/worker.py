"""A learner's side of the protocol: pull consistent snapshots, push into its own slots.

One push of sequence number k (docs/protocol.md)::

    L1  wait    until one of the learner's slots is FREE (freed by the PS: PS progress only)
    L2  claim   store slot = (WRITING, k), then next_seq = k + 1
    L3  write   the gradient or delta and its meta (version read, kind, progress)
    L4  commit  store slot = (READY, k)                  <- the learner's commit point

A direct learner (ASGD, SYNC) claims before its backward pass, which then writes the gradient
into the slot itself (L3 without a copy). It never changes its weights either, so with enough
weight buffers (`Layout.zero_copy`) its pull copies nothing: it pins the published buffer and
its model's parameters are read-only views of it until the next pull (Arena.pin). A learner killed between L2 and L4 leaves a WRITING
slot: the supervisor, after reaping it, records k as discarded and frees the slot. Sequence
numbers continue across restarts.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from gadei import arena as A
from gadei import context, faults, proc


class PSGone(RuntimeError):
    """The parameter server made no progress within the timeout."""


class Stopped(RuntimeError):
    """The job was stopped (STOP set, or its supervisor is gone)."""


class Worker:
    """Learner `i`'s handle on the arena, with its model's parameters packed in one flat tensor.

    `pull()` copies the published weights into the model (one memcpy); `push()` copies the
    model's gradients (or a given delta) into a free slot and commits it. A `direct` worker
    (ASGD, SYNC) claims the slot in `zero_grad()` instead, so that backward computes the
    gradient in the slot and `push()` only commits it.
    """

    def __init__(self, arena: A.Arena, i: int, model: torch.nn.Module | None = None, *,
                 ps_timeout: float = 60.0, ident: tuple[int, int] | None = None,
                 direct: bool = False):
        self.arena, self.i = arena, i
        # direct: backward writes the gradients straight into a claimed slot (see zero_grad)
        self.direct = direct
        # zero-copy pull: the model computes on the published weight buffer it pins
        self.zero_copy = direct and arena.layout.zero_copy
        self._on: int | None = None      # the weight buffer the parameters view (zero-copy)
        self._pinned_views: dict[int, list[torch.Tensor]] = {}
        self._held: int | None = None    # the slot claimed for the gradient being computed
        # (learner id, learners) the task sees in gadei.context: (i, arena learners), or an MPI
        # rank's global id and count when this arena is one node of a larger job
        self.ident = ident or (i, arena.layout.learners)
        self.ps_timeout = ps_timeout
        self.n = arena.layout.n
        self.learners = arena.layout.learners
        self.incarnation = arena.learner(i).incarnation
        self.next_seq = self.restart_seq()
        self.step = self.restart_step()
        self.data_epoch = arena.learner(i).data_epoch
        self.version = -1
        self.samples = 0            # samples in the current batch, set by the learner loop
        self.quota: int | None = None   # steps this learner runs in all (None: by epochs)
        self.params: list[torch.nn.Parameter] = []
        self.flat = torch.zeros(self.n)
        if model is not None:
            self.bind(model)
        self._owner = (self.arena.job.owner_pid, self.arena.job.owner_start)
        self._checked = 0.0
        self.update_context()

    def restart_seq(self) -> int:
        """Where this incarnation's sequence numbers continue: past anything its slots, its
        record or the published ledger have seen."""
        a, i = self.arena, self.i
        seen = [a.learner(i).next_seq - 1]
        seen += [A.ctrl_seq(a.slot_header(i, s).ctrl) for s in range(a.layout.slots)]
        seen.append(a.published_ledger()[1].amax(i))
        return max(seen) + 1

    def restart_step(self) -> int:
        """Steps completed: the learner's record, or a commit it made just before it died."""
        a, i = self.arena, self.i
        steps = [a.learner(i).step]
        for s in range(a.layout.slots):
            if A.ctrl_state(a.slot_header(i, s).ctrl) != A.WRITING:
                steps.append(a.slot_header(i, s).step)
        return max(steps)

    def bind(self, model: torch.nn.Module) -> None:
        """Make the model's parameters views of one flat tensor, in the layout's order."""
        names = [name for name, _ in self.arena.layout.params]
        got = [(name, p) for name, p in model.named_parameters()]
        if [n for n, _ in got] != names or any(tuple(p.shape) != tuple(s) for (_, p), (_, s)
                                                 in zip(got, self.arena.layout.params)):
            raise ValueError("the model's parameters differ from the arena's layout: "
                             "build_model() must give the same model in every process")
        self.params = [p for _, p in got]
        for p, view in zip(self.params, self._views(self.flat)[1]):
            view.copy_(p.data)
            p.data = view
        self._flat_np = self.flat.numpy()
        # Gradients live in one flat buffer too, allocated once: backward writes into it.
        # (Letting autograd keep fresh gradients every step costs a page fault per 4 KiB: 58 ms
        # instead of 10 for 16M weights.) Direct: the buffer is a slot.
        if self.direct:
            self._slot_grads = [self._views(torch.from_numpy(self.arena.slot(self.i, s)))
                                for s in range(self.arena.layout.slots)]
        else:
            self._grad = self._views(torch.zeros(self.n))
        for j, p in enumerate(self.params):
            p.grad = None
            p.register_hook(self._first_write(j, p))

    def _first_write(self, j: int, p: torch.nn.Parameter):
        """Parameter j's gradient hook: backward's first gradient of a step is copied into the
        buffer (one pass: read g, write the buffer), and autograd is handed an alias of the
        buffer, which it keeps as `.grad` without a copy (it steals a gradient nobody else
        holds). Zeroing the buffer and accumulating into it, as autograd does into an existing
        `.grad`, costs two passes more (docs/performance.md, "The gradient into the slot").
        Later gradients of the step (`.grad` set) accumulate as usual. Should autograd copy
        the alias instead, `gradient()` finds `.grad` outside the buffer and gathers it."""
        def hook(grad: torch.Tensor):
            if self._grad is None or p.grad is not None or grad.layout != torch.strided:
                return grad
            view = self._grad[1][j]
            view.copy_(grad)
            return view.detach()
        return hook

    def _views(self, flat: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`flat` and its views shaped as the parameters, in the layout's order."""
        views, off = [], 0
        for p in self.params:
            views.append(flat[off:off + p.numel()].view_as(p))
            off += p.numel()
        return flat, views

    def zero_grad(self) -> None:
        """Start a step's gradients: every `.grad` None, so that backward writes each gradient
        into one flat buffer (see `_first_write`; a parameter backward leaves alone reads as
        zeros in `gradient()`): the buffer is never zeroed as a pass of its own.

        Direct: the buffer is a slot, claimed here (L1 + L2) unless one is held already, so
        backward writes the gradient where the PS reads it and the push only commits it: no
        copy. A learner that dies while computing leaves the slot WRITING: discarded.
        """
        if self.direct and self._held is None:
            self._held = self.claim()
            self._grad = self._slot_grads[self._held]
        for p in self.params:
            p.grad = None

    def update_context(self) -> None:
        context._set(context.Context(self.ident[0], self.ident[1], self.incarnation,
                                     self.next_seq, self.step))

    # ---- liveness ------------------------------------------------------------------------
    def beat(self) -> None:
        self.arena.learner(self.i).beat = A.now_ns()

    def check(self) -> None:
        """Raise Stopped if the job is stopping or its owner is gone."""
        if self.arena.job.stop:
            raise Stopped("the job is stopping")
        now = time.monotonic()
        if now - self._checked > 0.5:
            self._checked = now
            if not proc.alive(*self._owner):
                raise Stopped(f"the job's supervisor (pid {self._owner[0]}) is gone")

    # ---- pull ----------------------------------------------------------------------------
    def pull(self) -> int:
        """The latest consistent weights into the model; return their version. Zero-copy: pin
        the published buffer and point the parameters at it (no copy); else copy them."""
        t0 = time.perf_counter_ns()
        if self.zero_copy:
            self.version, b = self.arena.pin(self.i)
            if b != self._on:
                for p, view in zip(self.params, self._views_of(b)):
                    p.data = view
                self._on = b
                self.flat = self._flat_np = None    # the private copy is never read again: 4·P freed
            self.arena.learner(self.i).pulled = self.version
        else:
            self.fetch(self._flat_np)
        self.spent("pull_ns", t0)
        return self.version

    def _views_of(self, b: int) -> list[torch.Tensor]:
        """Weight buffer b as the parameters' shapes, read-only (a write is a SIGSEGV)."""
        if b not in self._pinned_views:
            with warnings.catch_warnings():     # torch warns that it cannot protect them: the mapping does
                warnings.simplefilter("ignore", UserWarning)
                flat = torch.from_numpy(self.arena.readonly_weights(b))
            self._pinned_views[b] = self._views(flat)[1]
        return self._pinned_views[b]

    # ---- push ----------------------------------------------------------------------------
    def wait_for_ps(self, done, what: str):
        """Poll `done()` until it returns something true, and return that. The learner beats
        meanwhile; the wait ends with Stopped when the job stops and with PSGone when the PS
        has neither made `done()` true nor beaten for `ps_timeout` seconds."""
        sleep, since = 0.0, time.monotonic()
        while True:
            got = done()
            if got:
                return got
            self.beat()
            self.check()
            age = (A.now_ns() - self.arena.job.ps_beat) / 1e9
            if age > self.ps_timeout and time.monotonic() - since > self.ps_timeout:
                raise PSGone(f"learner {self.i}: the parameter server (pid {self.arena.job.ps_pid}) "
                             f"has not {what} nor beaten for {age:.0f} s")
            sleep = min(0.002, sleep * 2 or 20e-6)
            time.sleep(sleep)

    def claim(self) -> int:
        """L1 + L2: wait for a FREE slot, mark it (WRITING, next_seq); return the slot."""
        a, i, k = self.arena, self.i, self.next_seq
        free = lambda: next((s + 1 for s in range(a.layout.slots)  # noqa: E731  (+1: slot 0 is true)
                             if A.ctrl_state(a.slot_header(i, s).ctrl) == A.FREE), None)
        t0 = time.perf_counter_ns()
        s = self.wait_for_ps(free, "freed a slot") - 1
        self.spent("wait_ns", t0)
        a.slot_header(i, s).ctrl = A.ctrl(A.WRITING, k)
        a.learner(i).next_seq = k + 1
        return s

    def write(self, s: int, data: torch.Tensor | None = None) -> None:
        """L3: the payload (`data`, or the model's gradients) into slot s. No pass over it to
        validate: the PS checks it for NaN/Inf in the pass that applies it."""
        if data is not None:
            torch.from_numpy(self.arena.slot(self.i, s)).copy_(data)
        elif self.direct:
            self.gradient()                 # already in slot s (zero_grad claimed it)
        else:
            self.gradient(torch.from_numpy(self.arena.slot(self.i, s)))

    def commit(self, s: int, kind: int, samples: int = 0, steps: int = 1) -> int:
        """L4: write the slot's meta, then mark it (READY, k): the learner's commit point."""
        a, i, k = self.arena, self.i, self.next_seq
        step = self.step + steps
        m = a.slot_meta(i, s)           # plain stores, published by the release store below
        m[A.S_VERSION], m[A.S_KIND], m[A.S_STEP] = max(self.version, 0), kind, step
        m[A.S_DATA_EPOCH], m[A.S_SAMPLES] = self.data_epoch, samples
        a.slot_header(i, s).ctrl = A.ctrl(A.READY, k)    # committed
        faults.point("learner_committed", i, k)
        self.next_seq = k + 1
        self.step = step
        a.learner(i).step = step
        self.update_context()
        return k

    def push(self, kind: int = A.GRADIENT, data: torch.Tensor | None = None, *, samples: int = 0,
             steps: int = 1) -> int:
        """Commit the model's gradients (or `data`, a flat tensor) as the next sequence number.

        Returns the sequence number committed. `steps` is how many of the learner's steps this
        push completes (recorded with the commit, so a restarted learner resumes there).
        """
        in_slot = self.direct and data is None     # the gradient is in the held slot already
        if in_slot and self._held is None:
            raise RuntimeError("push_gradient() without zero_grad() before backward: a "
                               "direct learner's gradient must be computed into its slot")
        s = self._held if in_slot else self.claim()
        t0 = time.perf_counter_ns()
        faults.point("learner_writing", self.i, self.next_seq)
        self.write(s, data)
        k = self.commit(s, kind, samples, steps)
        if in_slot:
            # the slot is the PS's now: nothing may write the gradients there any more
            self._held = self._grad = None
            for p in self.params:
                p.grad = None
        self.spent("push_ns", t0)
        return k

    def spent(self, counter: str, since_ns: int) -> int:
        """Add the time since `since_ns` to this learner's time counter `counter` (pull_ns,
        wait_ns, push_ns, step_ns); now."""
        now = time.perf_counter_ns()
        lw = self.arena.learner(self.i)
        setattr(lw, counter, getattr(lw, counter) + now - since_ns)
        return now

    def push_gradient(self, samples: int = 0) -> int:
        """Commit the model's gradients as the next update; returns its sequence number."""
        return self.push(A.GRADIENT, samples=samples or self.samples)

    def push_delta(self, delta: torch.Tensor, *, samples: int = 0, steps: int = 1) -> int:
        """Commit `delta` (flat; the PS adds it to the weights as is) covering `steps` steps."""
        return self.push(A.DELTA, delta, samples=samples or self.samples, steps=steps)

    def fetch(self, out: np.ndarray) -> int:
        """Copy the latest consistent weights into `out` (not into the model); their version,
        which the next push records as the version it was computed from (its staleness)."""
        self.version, _ = self.arena.pull(out)
        self.arena.learner(self.i).pulled = self.version
        return self.version

    def gradient(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The model's gradients as one flat tensor: the buffer backward wrote them into (read
        it, don't keep it), or copied into `out`. A gradient autograd put elsewhere (a parameter
        whose `.grad` was replaced, e.g. a sparse one) is gathered into the buffer first."""
        flat, views = self._grad
        for p, view in zip(self.params, views):
            if p.grad is None:
                view.zero_()
            elif p.grad.is_sparse:
                view.copy_(p.grad.to_dense())
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)
        return flat if out is None else out.copy_(flat)

    def wait_applied(self, k: int) -> None:
        """Block until the PS has applied (or rejected) this learner's sequence number k.

        Only the PS frees a READY slot, after publishing it; so k is done once no slot of
        ours holds k as READY.
        """
        a, i, ready = self.arena, self.i, A.ctrl(A.READY, k)
        t0 = time.perf_counter_ns()
        self.wait_for_ps(lambda: all(a.slot_header(i, s).ctrl != ready
                                     for s in range(a.layout.slots)), f"applied seq {k}")
        self.spent("wait_ns", t0)

    def report(self, loss: float, samples: int) -> None:
        """Publish progress for the supervisor's metrics (not part of the protocol)."""
        a, i = self.arena, self.i
        a.learner(i).loss = A.f64_bits(loss)
        a.learner(i).samples = a.learner(i).samples + samples
        self.beat()
