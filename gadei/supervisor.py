"""The supervisor: owns the arena, starts the PS and the learners, replaces whoever dies,
writes checkpoints, and removes the arena at the end.

It never waits on a learner or the PS without a bound: it polls its children, and a child
that stops beating past its lease is killed and replaced. Only the supervisor creates and
unlinks the arena, and only it frees a dead learner's WRITING slot, after reaping that
learner, so no process can still be writing there.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import algorithms
from gadei import arena as A
from gadei import checkpoint, locks, shm
from gadei import ledger as L
from gadei import task as T
from gadei.job import JobConfig, JobError


@dataclass
class Outcome:
    """How a job ended, for its summary: the version and weights it ended with (name -> array),
    its ledger, and what the summary adds for this kind of job."""
    version: int
    weights: dict
    ledger: L.Ledger
    extra: dict = field(default_factory=dict)
    rates: tuple[float, float] | None = None     # (updates/s, samples/s) where the meter's do not apply


def sweep_stale(log=print) -> list[str]:
    """Unlink this user's arenas whose supervisor is gone (killed together with everything).

    An arena is live while its creator holds its lock (`shm.owned`): that holds in any PID
    namespace that shares /dev/shm, where a pid would not. What the sweep cannot read (another
    format, a damaged header) it leaves alone, but for a segment whose header was never written
    (a creation that died half way) once it is a minute old.
    """
    removed = []
    for name in shm.segments():
        if shm.owned(name):
            continue
        try:
            A.Arena.attach(name).close()
        except FileNotFoundError:
            continue
        except Exception:
            if not shm.never_written(name, age=60):
                continue
        if shm.unlink(name):
            removed.append(name)
            log(f"gadei: removed stale arena {name} (its supervisor is gone)")
    return removed


def direct(cfg) -> bool:
    """Whether the job's learners never change their weights between pulls (ASGD, SYNC), so
    that they can compute on the published weights in place."""
    return algorithms.protocol(cfg.optimizer, **cfg.hyper).direct_gradients


def weight_buffers(cfg) -> int:
    """The arena's weight buffers: --weight-buffers, or learners + 2 where the learners compute
    on the published weights in place (`direct`), else 3 (DOWNPOUR, EASGD, EAMSGD keep a
    private copy, and pull by copying)."""
    if cfg.weight_buffers is not None:
        return cfg.weight_buffers
    return cfg.learners + 2 if direct(cfg) else A.BUFFERS


def discard_writing(arena: A.Arena, i: int) -> list[int]:
    """Free dead learner i's WRITING slots and clear its pin (nothing computes on that weight
    buffer any more: the PS may reuse it); return the slots' sequence numbers (now discarded).

    Only call this once learner i is reaped: then nobody can still be writing those slots.
    """
    arena.unpin(i)
    out = []
    for s in range(arena.layout.slots):
        h = arena.slot_header(i, s)
        w = h.ctrl
        if A.ctrl_state(w) == A.WRITING:
            out.append(A.ctrl_seq(w))
            h.step = 0                       # its progress was never committed
            h.ctrl = A.ctrl(A.FREE, A.ctrl_seq(w))
    return out


class Child:
    """A role process: the PS (i = None) or learner i, with its log file."""

    def __init__(self, cmd: list[str], log: Path, i: int | None, first: bool, progress: int):
        self.i = i
        self.log = log
        self.progress = progress        # its step (the PS: the published version) when started
        self.lease_missed = False
        env = dict(os.environ)
        if not first:
            env.pop("GADEI_FAULTS", None)   # an injected fault fires in the first incarnation only
        with open(log, "ab") as f:
            # a session of its own: Ctrl-C reaches the supervisor only, which stops the job
            self.popen = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, env=env)
        self.started = time.monotonic()

    def kill(self) -> int:
        """SIGKILL and reap; certain death before anyone touches what it owned."""
        if self.popen.poll() is None:
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass
        return self.popen.wait()

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


class Supervisor:
    def __init__(self, cfg: JobConfig, log=None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.arena: A.Arena | None = None
        self.ps: Child | None = None
        self.learners: dict[int, Child] = {}
        self.local = cfg.learners       # learner processes this supervisor starts
        self.discarded: list[list[int]] = [[] for _ in range(cfg.learners)]
        self.incarnations = [1] * cfg.learners
        self.restarts = {"ps": 0, "learners": 0}
        self.failures: dict = {}
        self.interrupted = False
        self.last_ckpt_version = -1
        self._locks = []

    # ---- setup -------------------------------------------------------------------------
    def acquire(self, outs: tuple[Path, ...] = ()) -> None:
        """Refuse a second live job of the same name, or writing the same output folder (its
        own or one of `outs`); the locks die with their holder."""
        job = locks.hold(locks.job_lock_dir() / f"{self.cfg.job}.lock",
                         f"job {self.cfg.job!r} is already running; wait for it, stop it, or choose another --job")
        self._locks = [job]
        for out in (self.out, *outs):
            out.mkdir(parents=True, exist_ok=True)
            self._locks.append(locks.hold(out / ".gadei.lock", f"another job writes {out}; wait for it, "
                                          "stop it, or choose another --out"))

    def build(self) -> None:
        """Build the model, create the arena and fill it: fresh, or from `cfg.resume`."""
        cfg = self.cfg
        torch.set_num_threads(1)
        task = T.build(cfg.task, cfg.task_options)
        torch.manual_seed(cfg.seed)
        model = task.build_model()
        params = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
        if not params:
            raise JobError(f"task {cfg.task!r} built a model with no parameters")
        flat = torch.cat([p.detach().reshape(-1).float() for _, p in model.named_parameters()]).numpy()
        rule = algorithms.protocol(cfg.optimizer, **cfg.hyper).rule
        state = rule.init_state(flat.size)
        layout = A.Layout(params=tuple(params),
                          state=tuple((k, v.dtype.name, v.shape) for k, v in state.items()),
                          rule=rule.name, hyper=tuple(sorted(rule.hyper().items())),
                          learners=cfg.learners, slots=cfg.slots,
                          weight_buffers=weight_buffers(cfg))
        version, ledger = 0, L.Ledger({i: L.Record() for i in range(cfg.learners)})
        if cfg.resume:
            version, flat, state, ledger = self.resume_point(layout, state)
        sweep_stale(self.log)
        try:
            self.arena = a = A.Arena.create(cfg.job, layout, {"config": cfg.to_dict()})   # owned by us
        except shm.NoSpace as e:
            raise JobError(str(e)) from None
        b = version % A.BUFFERS
        a.start_at(version)
        np.copyto(a.weights(0), flat)
        for k, v in state.items():
            np.copyto(a.state(b)[k], v)
        a.write_ledger(b, ledger.published())
        for i, rec in enumerate(ledger.ordered()):
            lw = a.learner(i)
            lw.next_seq, lw.step, lw.data_epoch = rec.next_seq, rec.progress[0], rec.progress[1]
            self.discarded[i] = list(rec.discarded)
            self.incarnations[i] = rec.incarnations + (1 if cfg.resume else 0)
            lw.incarnation = self.incarnations[i] - 1
        a.job.published = version
        self.start_version = version

    def resume_point(self, layout: A.Layout, state: dict) -> tuple[int, np.ndarray, dict, L.Ledger]:
        """(version, weights, optimizer state, cut ledger) of the checkpoint `cfg.resume`."""
        cfg = self.cfg
        ck = checkpoint.load_job(cfg.resume, task=cfg.task, params=layout.params, optimizer=cfg.optimizer,
                                 learners=cfg.learners)
        if set(ck["state"]) != set(state):
            raise JobError(f"cannot resume from {cfg.resume}: its optimizer state ({', '.join(ck['state'])}) "
                           f"is not {cfg.optimizer!r}'s")
        return ck["version"], layout.flat(ck["weights"]), ck["state"], ck["ledger"]

    # ---- children ----------------------------------------------------------------------
    def _cmd(self, *args) -> list[str]:
        return [sys.executable, "-m", "gadei.role", *args]

    def start_ps(self) -> None:
        self.arena.job.ps_incarnation = self.arena.job.ps_incarnation + 1
        self.arena.job.ps_beat = A.now_ns()
        self.arena.job.ps_pid = 0
        self.ps = Child(self._cmd("ps", self.arena.name), self.out / "logs" / "ps.log", None,
                        first=self.restarts["ps"] == 0, progress=self.arena.job.published)

    def start_learner(self, i: int) -> None:
        a = self.arena
        a.learner(i).beat = A.now_ns()
        a.learner(i).pid = 0
        self.learners[i] = Child(self._cmd("learner", a.name, str(i)),
                                 self.out / "logs" / f"learner-{i}.log", i,
                                 first=self.incarnations[i] == 1, progress=a.learner(i).step)

    def discard(self, i: int, died: bool = True) -> None:
        """Learner i is reaped: its WRITING slots' numbers are discarded and the slots freed."""
        for k in discard_writing(self.arena, i):
            self.discarded[i].append(k)
            if died:
                self.log(f"gadei: learner {i} died while writing seq {k}: discarded")

    def reap_learner(self, i: int, child: Child, code: int) -> None:
        """Learner i is dead (reaped): discard its WRITING slots, restart it unless it was done."""
        a = self.arena
        self.discard(i)
        del self.learners[i]
        if a.learner(i).done:
            return
        self.count_failure(i, child, code, progressed=a.learner(i).step > child.progress)
        if self.restarts["learners"] >= self.cfg.max_restarts:
            raise JobError(f"learners were restarted {self.restarts['learners']} times; giving up")
        self.restarts["learners"] += 1
        self.incarnations[i] += 1
        a.learner(i).incarnation = self.incarnations[i] - 1
        self.start_learner(i)

    def count_failure(self, who, child: Child, code: int, progressed: bool) -> None:
        """A role died: a failure of its own (an error exit, or a lease we ended) without progress
        since it started counts; the third in a row ends the job with the role's own last words.
        A kill from outside (SIGKILL, SIGTERM: chaos, an operator) is no failure of the role."""
        own = code not in (0, -signal.SIGKILL, -signal.SIGTERM) or child.lease_missed
        if progressed or not own:
            self.failures[who] = 0
            return
        self.failures[who] = self.failures.get(who, 0) + 1
        if self.failures[who] >= 3:
            what = "the PS" if who == "ps" else f"learner {who}"
            why = "missed its lease" if child.lease_missed else f"exit code {code}"
            hint = ""
            if who != "ps" and code == -signal.SIGSEGV and self.pull_mode()["zero_copy"]:
                hint = ("\nA learner computes on the PS's published weights through a read-only mapping "
                        "(the zero-copy pull), so a task that writes its parameters in place (e.g. "
                        "nn.Embedding(max_norm=...)) crashes there: run with --weight-buffers 3 to have "
                        "the learners copy the weights instead.")
            raise JobError(f"{what} failed {self.failures[who]} times in a row without making progress "
                           f"({why}); its log ({child.log}) ends with:\n{child.tail()}{hint}")

    def reap_ps(self, code: int) -> None:
        if self.restarts["ps"] >= self.cfg.max_restarts:
            raise JobError(f"the PS was restarted {self.restarts['ps']} times; giving up")
        self.count_failure("ps", self.ps, code, progressed=self.arena.job.published > self.ps.progress)
        self.restarts["ps"] += 1
        self.log(f"gadei: the PS died (exit code {code}); a new PS resumes from the published state")
        self.start_ps()

    def missed_lease(self, child: Child, words, now: int) -> bool:
        """A child is past its lease when it stopped beating; before it has started (written
        its pid), when it has been starting for longer than `start_timeout`. `words`: its pid
        and beat words, as (pid, beat)."""
        pid, beat = words
        if pid == 0:
            return time.monotonic() - child.started > self.cfg.start_timeout
        return now - beat > int(self.cfg.lease * 1e9)

    def watch(self) -> None:
        """One round: reap the dead, replace those past their lease."""
        a, now = self.arena, A.now_ns()
        code = self.ps.popen.poll()
        if code is None and self.missed_lease(self.ps, (a.job.ps_pid, a.job.ps_beat), now):
            self.log(f"gadei: the PS (pid {self.ps.popen.pid}) missed its lease; replacing it")
            self.ps.lease_missed = True
            code = self.ps.kill()
        if code is not None:
            self.ps.kill()
            self.reap_ps(code)
        for i, child in list(self.learners.items()):
            code = child.popen.poll()
            lw = a.learner(i)
            if code is None and self.missed_lease(child, (lw.pid, lw.beat), now):
                self.log(f"gadei: learner {i} (pid {child.popen.pid}) missed its lease; replacing it")
                child.lease_missed = True
                code = child.kill()
            if code is not None:
                child.kill()
                self.reap_learner(i, child, code)

    # ---- state -------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, np.ndarray, dict, dict]:
        """A consistent copy of the published version: (version, weights, state, the PS's
        published ledger)."""
        a = self.arena
        w = np.empty(a.layout.n, np.float32)
        st = {k: np.empty(s, dt) for k, dt, s in a.layout.state}
        v, pub = a.pull(w, state=st, timeout=300)
        return v, w, st, pub

    def ledger(self, pub: dict) -> L.Ledger:
        """The PS's published ledger joined with the supervisor's part."""
        return L.Ledger.join(pub, self.discarded, self.incarnations,
                             [self.arena.learner(i).next_seq for i in range(self.cfg.learners)])

    def write_checkpoint(self, final: bool = False) -> tuple[int, dict, L.Ledger]:
        """Checkpoint the published version; return (version, weights by name, ledger)."""
        v, w, st, pub = self.snapshot()
        weights, ledger = self.arena.layout.named(w), self.ledger(pub)
        checkpoint.save_job(self.out / "checkpoint", self.cfg.to_dict(), weights, st, v, ledger, final)
        self.last_ckpt_version = v
        return v, weights, ledger

    def conclude(self, final: bool, train_s: float) -> Outcome:
        """The job's last checkpoint and what its summary reports."""
        v, weights, ledger = self.write_checkpoint(final)
        return Outcome(v, weights, ledger, {"restarts": self.restarts, "time_split": self.time_split(train_s),
                                            "pull": self.pull_mode()})

    def pull_mode(self) -> dict:
        """How the learners pulled: in place on a pinned buffer (zero-copy), or by copying
        (their protocol changes local weights, or --weight-buffers is below learners + 2)."""
        layout = self.arena.layout
        return {"weight_buffers": layout.weight_buffers, "zero_copy": direct(self.cfg) and layout.zero_copy}

    def time_split(self, wall_s: float) -> dict:
        """Where the time went: per learner compute, pull, push and wait; the PS's busy time.

        Counted by the processes themselves (a restarted learner's counters carry on)."""
        a = self.arena
        learners = {}
        for i in range(self.cfg.learners):
            lw = a.learner(i)
            pull, wait, push, step = (x / 1e9 for x in (lw.pull_ns, lw.wait_ns, lw.push_ns, lw.step_ns))
            learners[str(i)] = {"compute_s": round(max(0.0, step - pull - wait - push), 3),
                                "pull_s": round(pull, 3), "push_s": round(push, 3), "wait_s": round(wait, 3)}
        busy = a.job.ps_busy_ns / 1e9
        return {"learners": learners, "ps": {"busy_s": round(busy, 3), "idle_s": round(max(0.0, wall_s - busy), 3)}}

    def drained(self) -> bool:
        a = self.arena
        return all(A.ctrl_state(a.slot_header(i, s).ctrl) == A.FREE
                   for i in range(self.cfg.learners) for s in range(a.layout.slots))

    def finished(self) -> bool:
        """Every learner is out and every slot it committed is applied."""
        return not self.learners and self.drained()

    # ---- the run -----------------------------------------------------------------------
    poll_s = 0.05           # seconds between the supervisor's rounds

    def run(self, on_tick=None) -> float:
        """Run the job to the end; returns its training wall seconds."""
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        self.start_ps()
        for i in range(self.local):
            self.start_learner(i)
        t0 = time.monotonic()
        while True:
            self.watch()
            if on_tick:
                on_tick(self)
            if self.tick():
                break
            time.sleep(self.poll_s)
        return time.monotonic() - t0

    def tick(self) -> bool:
        """The supervisor's own work in one round (a checkpoint when due); True when the job is done."""
        cfg, a = self.cfg, self.arena
        if cfg.checkpoint_every and a.job.published - max(self.last_ckpt_version, self.start_version) \
                >= cfg.checkpoint_every:
            self.write_checkpoint()
        return self.finished()

    def stop_children(self, grace: float = 5.0) -> None:
        """Stop the learners, let the PS apply everything they committed, then stop it.

        So an interrupted job loses no committed gradient either: only one being written
        when its learner was stopped is discarded. Every wait is bounded by `grace`.
        """
        self.stop_learners(grace)
        self.stop_ps(grace)

    def stop_learners(self, grace: float = 5.0) -> None:
        """Stop the learners; a slot one was writing when it stopped is discarded."""
        a = self.arena
        if a is not None:
            a.job.stop = 1
        for i, c in list(self.learners.items()):
            try:
                c.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                c.kill()
            if a is not None:
                self.discard(i, died=False)
        self.learners.clear()

    def stop_ps(self, grace: float = 5.0) -> None:
        """Let the PS apply every committed slot, then stop it and unlink the arena."""
        a = self.arena
        if self.ps is not None and a is not None:
            a.job.ps_stop = 1                  # it applies what is READY, then waits for the unlink
            for attempt in range(2):           # a PS stuck (stopped, descheduled) is replaced once
                deadline = time.monotonic() + (2 * grace if attempt else grace + 5)
                while not self.drained() and self.ps.popen.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                if self.drained() or attempt:
                    break
                self.ps.kill()
                self.log("gadei: the PS did not drain the committed slots in time; a new PS drains them")
                self.start_ps()
        if a is not None:
            a.unlink()                         # from here a killed supervisor leaves nothing behind
        if self.ps is not None:
            try:
                self.ps.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            self.ps.kill()
        self.ps = None

    def close(self) -> None:
        self.stop_children()
        if self.arena is not None:
            self.arena.unlink()
            self.arena.close()
            self.arena = None
        for f in self._locks:
            f.close()
        self._locks = []
