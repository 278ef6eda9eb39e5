"""The supervisor: owns the arena, starts the PS and the learners, replaces whoever dies,
writes checkpoints, metrics and the summary, and removes the arena at the end.

It never waits on a learner or the PS without a bound: it polls its children, and a child
that stops beating past its lease is killed and replaced. Only the supervisor creates and
unlinks the arena, and only it frees a dead learner's WRITING slot, after reaping that
learner, so no process can still be writing there.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import algorithms
from gadei import arena as A
from gadei import checkpoint, proc, shm
from gadei import ledger as L
from gadei.job import JobConfig
from gadei.server import empty_ledger
from gadei import task as T


class JobError(RuntimeError):
    """The job cannot start or cannot go on; the message says why and what to do."""


def lock_dir() -> Path:
    d = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/gadei-{os.getuid()}") / "gadei-locks"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def sweep_stale(log=print) -> list[str]:
    """Unlink this user's arenas whose supervisor is gone (killed together with everything).

    An arena whose owner is not yet written is being created right now, unless it is old.
    """
    removed = []
    for name in shm.segments():
        try:
            young = time.time() - os.stat(shm.SHM_DIR / name).st_ctime < 60
            a = A.Arena.attach(name)
        except FileNotFoundError:
            continue
        except Exception:
            if not young:        # unreadable and old: a creation that died half way
                shm.unlink(name)
                removed.append(name)
            continue
        owner = (a.ctl.load(A.OWNER_PID), a.ctl.load(A.OWNER_START))
        a.close()
        if owner[0] == 0 and young:
            continue
        if not proc.alive(*owner):
            shm.unlink(name)
            removed.append(name)
            log(f"gadei: removed stale arena {name} (its supervisor, pid {owner[0]}, is gone)")
    return removed


def discard_writing(arena: A.Arena, i: int) -> list[int]:
    """Free dead learner i's WRITING slots; return their sequence numbers (now discarded).

    Only call this once learner i is reaped: then nobody can still be writing those slots.
    """
    out = []
    for s in range(arena.layout.slots):
        w = arena.ctl.load(arena.sw(i, s, A.S_CTRL))
        if A.ctrl_state(w) == A.WRITING:
            out.append(A.ctrl_seq(w))
            arena.ctl.store(arena.sw(i, s, A.S_STEP), 0)   # its progress was never committed
            arena.ctl.store(arena.sw(i, s, A.S_CTRL), A.ctrl(A.FREE, A.ctrl_seq(w)))
    return out


class Child:
    """A role process: the PS (i = None) or learner i, with its log file."""

    def __init__(self, cmd: list[str], log: Path, i: int | None, first: bool):
        self.i = i
        self.log = log
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
        self._lock = None

    # ---- setup -------------------------------------------------------------------------
    def acquire(self) -> None:
        """Refuse a second live job of the same name (the lock dies with its holder)."""
        path = lock_dir() / f"{self.cfg.job}.lock"
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise JobError(f"job {self.cfg.job!r} is already running ({holder}); wait for it, stop it, "
                           "or choose another --out or --job") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, output {self.out.resolve()}")
        f.flush()
        self._lock = f

    def build(self) -> None:
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
        state0 = rule.init_state(flat.size)
        ledger = empty_ledger(cfg.learners)
        version, learner_recs = 0, None
        if cfg.resume:
            ck = checkpoint.load(cfg.resume)
            flat, state0, ledger, version, learner_recs = self._from_checkpoint(ck, params, state0)
        layout = A.Layout(params=tuple(params),
                          state=tuple((k, v.dtype.name, v.shape) for k, v in state0.items()),
                          rule=rule.name, hyper=tuple(sorted(rule.hyper().items())),
                          learners=cfg.learners, slots=cfg.slots)
        sweep_stale(self.log)
        self.arena = a = A.Arena.create(cfg.job, layout, {"config": cfg.to_dict()})   # owned by us
        b = version % A.BUFFERS
        np.copyto(a.weights(b), flat)
        for k, v in state0.items():
            np.copyto(a.state(b)[k], v)
        a.write_ledger(b, ledger)
        for i in range(cfg.learners):
            if learner_recs:
                rec = learner_recs[i]
                a.ctl.store(a.lw(i, A.L_NEXT_SEQ), rec["next_seq"])
                a.ctl.store(a.lw(i, A.L_STEP), rec["step"])
                a.ctl.store(a.lw(i, A.L_EPOCH), rec["epoch"])
                self.discarded[i] = list(rec["discarded"])
                self.incarnations[i] = rec["incarnations"] + 1
            a.ctl.store(a.lw(i, A.L_INCARNATION), self.incarnations[i] - 1)
        a.ctl.store(A.PUB, version)
        self.start_version = version
        self.start_updates = ledger["updates"]

    def _from_checkpoint(self, ck: dict, params, state0):
        meta = ck["meta"]
        cfg = self.cfg
        got = [(k, tuple(v.shape)) for k, v in ck["weights"].items()]
        if got != params:
            raise JobError(f"cannot resume from {cfg.resume}: its model ({len(got)} tensors) differs "
                           f"from task {cfg.task!r}'s ({len(params)} tensors)")
        if set(ck["state"]) != set(state0) or meta.get("optimizer") != cfg.optimizer:
            raise JobError(f"cannot resume from {cfg.resume}: it was trained with optimizer "
                           f"{meta.get('optimizer')!r}, not {cfg.optimizer!r}")
        if meta.get("learners") != cfg.learners:
            raise JobError(f"cannot resume from {cfg.resume}: it ran {meta.get('learners')} learners, "
                           f"this job asks for {cfg.learners}")
        flat = np.concatenate([v.reshape(-1) for v in ck["weights"].values()]).astype(np.float32)
        return flat, ck["state"], meta["ledger"], meta["version"], meta["learner_records"]

    # ---- children ----------------------------------------------------------------------
    def _cmd(self, *args) -> list[str]:
        return [sys.executable, "-m", "gadei.role", *args]

    def start_ps(self) -> None:
        self.arena.ctl.store(A.EPOCH, self.arena.ctl.load(A.EPOCH) + 1)
        self.arena.ctl.store(A.PS_BEAT, A.now_ns())
        self.arena.ctl.store(A.PS_PID, 0)
        self.ps = Child(self._cmd("ps", self.arena.name), self.out / "logs" / "ps.log", None,
                        first=self.restarts["ps"] == 0)

    def start_learner(self, i: int) -> None:
        a = self.arena
        a.ctl.store(a.lw(i, A.L_BEAT), A.now_ns())
        a.ctl.store(a.lw(i, A.L_PID), 0)
        self.learners[i] = Child(self._cmd("learner", a.name, str(i)),
                                 self.out / "logs" / f"learner-{i}.log", i,
                                 first=self.incarnations[i] == 1)

    def reap_learner(self, i: int, child: Child, code: int) -> None:
        """Learner i is dead (reaped): discard its WRITING slots, restart it unless it was done."""
        a, ctl = self.arena, self.arena.ctl
        for k in discard_writing(a, i):
            self.discarded[i].append(k)
            self.log(f"gadei: learner {i} died while writing seq {k}: discarded")
        del self.learners[i]
        if ctl.load(a.lw(i, A.L_DONE)):
            return
        if code not in (0, -signal.SIGKILL, -signal.SIGTERM) and not self._progressed(i, child):
            self.failures[i] = self.failures.get(i, 0) + 1
            if self.failures[i] >= 3:
                raise JobError(f"learner {i} failed {self.failures[i]} times in a row without making "
                               f"progress (exit code {code}); its log ({child.log}) ends with:\n"
                               f"{child.tail()}")
        else:
            self.failures[i] = 0
        if self.restarts["learners"] >= self.cfg.max_restarts:
            raise JobError(f"learners were restarted {self.restarts['learners']} times; giving up")
        self.restarts["learners"] += 1
        self.incarnations[i] += 1
        ctl.store(a.lw(i, A.L_INCARNATION), self.incarnations[i] - 1)
        self.start_learner(i)

    def _progressed(self, i: int, child: Child) -> bool:
        return time.monotonic() - child.started > 30 or self.arena.ctl.load(self.arena.lw(i, A.L_PID)) != 0 \
            and self.arena.ctl.load(self.arena.lw(i, A.L_STEP)) > 0

    def reap_ps(self, code: int) -> None:
        if self.restarts["ps"] >= self.cfg.max_restarts:
            raise JobError(f"the PS was restarted {self.restarts['ps']} times; giving up")
        if code not in (-signal.SIGKILL, -signal.SIGTERM) and time.monotonic() - self.ps.started < 30:
            self.failures["ps"] = self.failures.get("ps", 0) + 1
            if self.failures["ps"] >= 3:
                raise JobError(f"the PS failed {self.failures['ps']} times in a row (exit code {code}); "
                               f"its log ({self.ps.log}) ends with:\n{self.ps.tail()}")
        self.restarts["ps"] += 1
        self.log(f"gadei: the PS died (exit code {code}); a new PS resumes from the published state")
        self.start_ps()

    def missed_lease(self, child: Child, pid_word: int, beat_word: int, now: int) -> bool:
        """A child is past its lease when it stopped beating; before it has started (written
        its pid), when it has been starting for longer than `start_timeout`."""
        ctl = self.arena.ctl
        if ctl.load(pid_word) == 0:
            return time.monotonic() - child.started > self.cfg.start_timeout
        return now - ctl.load(beat_word) > int(self.cfg.lease * 1e9)

    def watch(self) -> None:
        """One round: reap the dead, replace those past their lease."""
        a, now = self.arena, A.now_ns()
        code = self.ps.popen.poll()
        if code is None and self.missed_lease(self.ps, A.PS_PID, A.PS_BEAT, now):
            self.log(f"gadei: the PS (pid {self.ps.popen.pid}) missed its lease; replacing it")
            code = self.ps.kill()
        if code is not None:
            self.ps.kill()
            self.reap_ps(code)
        for i, child in list(self.learners.items()):
            code = child.popen.poll()
            if code is None and self.missed_lease(child, a.lw(i, A.L_PID), a.lw(i, A.L_BEAT), now):
                self.log(f"gadei: learner {i} (pid {child.popen.pid}) missed its lease; replacing it")
                code = child.kill()
            if code is not None:
                child.kill()
                self.reap_learner(i, child, code)

    # ---- state -------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, np.ndarray, dict, dict]:
        """A consistent copy of the published version: (version, weights, state, ledger)."""
        a = self.arena
        w = np.empty(a.layout.n, np.float32)
        st = {k: np.empty(s, dt) for k, dt, s in a.layout.state}
        v, ledger = a.pull(w, state=st, timeout=300)
        return v, w, st, ledger

    def learner_records(self, ledger: dict, cut: bool) -> list[dict]:
        """Per learner: where its sequence numbers continue, its progress, its discards.

        At a checkpoint (`cut`), everything after the published state is dropped: gradients
        committed but not yet applied live only in memory, so a job resumed from this file
        continues each learner right after its last applied (or rejected) sequence number.
        """
        a, recs = self.arena, []
        for i in range(self.cfg.learners):
            amax = ledger["amax"][i]
            if cut:
                nxt = amax + 1
                disc = [k for k in self.discarded[i] if k < nxt]
                step, epoch = ledger["progress"][i][0], ledger["progress"][i][1]
            else:
                nxt = max(a.ctl.load(a.lw(i, A.L_NEXT_SEQ)), amax + 1)
                disc = list(self.discarded[i])
                step, epoch = a.ctl.load(a.lw(i, A.L_STEP)), a.ctl.load(a.lw(i, A.L_EPOCH))
            recs.append({"next_seq": nxt, "discarded": sorted(disc), "step": step, "epoch": epoch,
                         "incarnations": self.incarnations[i]})
        return recs

    def write_checkpoint(self, final: bool = False) -> int:
        v, w, st, ledger = self.snapshot()
        weights, off = {}, 0
        for name, shape in self.arena.layout.params:
            n = int(np.prod(shape, dtype=np.int64))
            weights[name] = w[off:off + n].reshape(shape)
            off += n
        meta = {"config": self.cfg.to_dict(), "version": v, "ledger": ledger,
                "learner_records": self.learner_records(ledger, cut=True),
                "optimizer": self.cfg.optimizer, "learners": self.cfg.learners,
                "task": self.cfg.task, "task_options": self.cfg.task_options,
                "final": final, "time": time.time()}
        checkpoint.save(self.out / "checkpoint", weights, st, meta)
        self.last_ckpt_version = v
        return v

    def summary_ledger(self, ledger: dict) -> dict:
        out = {}
        for i, rec in enumerate(self.learner_records(ledger, cut=False)):
            out[str(i)] = {"committed": L.committed(rec["next_seq"], rec["discarded"]),
                           "applied": ledger["applied"][i], "discarded": rec["discarded"],
                           "rejected": ledger["rejected"][i], "incarnations": rec["incarnations"]}
        return out

    def time_split(self, wall_s: float) -> dict:
        """Where the time went: per learner compute, pull, push and wait; the PS's busy share.

        Counted by the processes themselves (a restarted learner's counters carry on)."""
        a = self.arena
        get = lambda i, w: a.ctl.load(a.lw(i, w)) / 1e9  # noqa: E731
        learners = {}
        for i in range(self.cfg.learners):
            pull, wait, push, step = (get(i, w) for w in (A.L_PULL_NS, A.L_WAIT_NS, A.L_PUSH_NS, A.L_STEP_NS))
            learners[str(i)] = {"compute_s": round(max(0.0, step - pull - wait - push), 3),
                                "pull_s": round(pull, 3), "push_s": round(push, 3), "wait_s": round(wait, 3)}
        busy = a.ctl.load(A.PS_BUSY_NS) / 1e9
        return {"learners": learners, "ps": {"busy_s": round(busy, 3), "idle_s": round(max(0.0, wall_s - busy), 3)}}

    def drained(self) -> bool:
        a = self.arena
        return all(A.ctrl_state(a.ctl.load(a.sw(i, s, A.S_CTRL))) == A.FREE
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
        if cfg.checkpoint_every and a.published() - max(self.last_ckpt_version, self.start_version) \
                >= cfg.checkpoint_every:
            self.write_checkpoint()
        return self.finished()

    def stop_children(self, grace: float = 5.0) -> None:
        """Stop the learners, let the PS apply everything they committed, then stop it.

        So an interrupted job loses no committed gradient either: only one being written
        when its learner was stopped is discarded. Every wait is bounded by `grace`.
        """
        a = self.arena
        if a is not None:
            a.ctl.store(A.STOP, 1)
        for i, c in list(self.learners.items()):
            try:
                c.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                c.kill()
            if a is not None:
                for k in discard_writing(a, i):
                    self.discarded[i].append(k)
        self.learners.clear()
        if self.ps is not None and a is not None:
            a.ctl.store(A.PS_STOP, 1)          # it applies what is READY, then waits for the unlink
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
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@contextmanager
def interruptible(*signals: int):
    """Inside, each of `signals` raises KeyboardInterrupt, so that a job stops the one way it
    does on Ctrl-C (children stopped, committed slots drained, checkpoint). Explicit even for
    SIGINT: Python leaves it ignored in a job started ignoring it (`cmd &` in a script). The
    previous handlers come back on the way out."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
