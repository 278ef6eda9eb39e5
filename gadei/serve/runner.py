"""The training queue: each classifier trains as its own `gadei train` subprocess.

One fixed recipe for every customer (GaDei's point: a conservative setting, small mini-batches
and a small learning rate, does well on every data set, so the API has no knob). The queue lives
in the database: a classifier in status Training with no process is waiting; the runner thread
starts waiting ones in upload order while fewer than `max_jobs` run, and records each process
(pid and start time) so that after a restart it can tell a live leftover from a dead one.

Durability: every job checkpoints every `checkpoint_every` updates into its own folder. When
the service stops (SIGTERM) it interrupts its jobs, which save a checkpoint on the way out; when
it is killed (kill -9), the kernel sends each job SIGTERM (PR_SET_PDEATHSIG), with the same
effect. Either way the classifier stays Training, and at the next start the runner resumes it
with `gadei train --resume` from its folder: the ledger continues, so every committed update is
applied exactly once across the interruption. A job lock held by gadei (one live job per job
name) and the leftover check in `recover` make sure no classifier trains twice at once.

Isolation: a job that crashes is retried from its checkpoint, then marked Failed with its log's
tail; one that runs past `max_train_s` is stopped and marked Failed. Either way the slot goes to
the next in the queue, so no tenant's job can stall the others.
"""
from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from gadei import ledger as L
from gadei import proc
from gadei.serve.db import Database

# The task every classifier trains: referred to by its spec, never imported here (the service
# must not load a workload at import time; `gadei train` and gadei's loader import it).
TASK_SPEC = "csv_text"    # the task by its registered name (setup.py, entry points gadei.tasks)
TRAINING_CSV = "training.csv"
MAX_ATTEMPTS = 3               # failed runs of one classifier's job before it is marked Failed


@dataclass(frozen=True)
class Recipe:
    """The one training setting of the service (see the module docstring). `GADEI_SERVE_RECIPE`
    (a JSON object of these fields) changes it for a whole service: for tests and benchmarks,
    never per customer."""
    optimizer: str = "adam"
    lr: float = 1e-3
    learners: int = 2
    batch: int = 32
    epochs: float = 6.0
    min_updates: int = 300     # a tiny data set still gets enough updates to fit
    max_updates: int = 8000    # bounds the time of the largest (20,000 rows: 6 epochs = 3,375)
    valid_fraction: float = 0.1
    checkpoint_every: int = 100
    eval_every: float = 10.0   # seconds between validation scores written to metrics.jsonl
    max_train_s: float = 3600.0

    @classmethod
    def from_env(cls) -> "Recipe":
        text = os.environ.get("GADEI_SERVE_RECIPE", "").strip()
        if not text:
            return cls()
        given = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"GADEI_SERVE_RECIPE: unknown field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**given)

    def planned_updates(self, rows: int) -> int:
        """Updates for a training set of `rows` (the held-out share excluded)."""
        train_rows = rows - min(rows - 1, max(1, round(rows * self.valid_fraction)))
        per_epoch = math.ceil(train_rows / self.batch)
        return int(min(self.max_updates, max(self.min_updates, round(self.epochs * per_epoch))))

    def command(self, folder: Path, job: str, updates: int, resume: bool) -> list[str]:
        """The `gadei train` command line of one classifier's job in `folder`."""
        cmd = [sys.executable, "-m", "gadei", "train", "--task", TASK_SPEC,
               "--optimizer", self.optimizer, "--lr", str(self.lr), "--learners", str(self.learners),
               "--steps", str(updates), "--out", str(folder), "--job", job,
               "--checkpoint-every", str(self.checkpoint_every), "--eval-every", str(self.eval_every),
               "--no-progress", "--path", str(folder / TRAINING_CSV), "--batch", str(self.batch),
               "--valid-fraction", str(self.valid_fraction)]
        return cmd + (["--resume", str(folder)] if resume else [])

    def to_dict(self) -> dict:
        return asdict(self)


_LIBC = ctypes.CDLL(None, use_errno=True)   # bound here: the forked child only calls into it
PR_SET_PDEATHSIG = 1


def _child_setup(parent: int):
    """In the forked child, before exec: lower priority (serving answers first) and get SIGTERM
    when the service dies, even by kill -9, so the job checkpoints and stops with it."""
    def setup():
        os.nice(10)
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:               # the service died before prctl: no signal will come
            os._exit(1)
    return setup


def _child_env() -> dict:
    """The service's environment, with this gadei first on the path: the job runs the same code."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def last_metrics(folder: Path) -> dict:
    """The last row of a job's metrics.jsonl ({} if none yet)."""
    path = folder / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue                         # a line being written
    return {}


def training_curve(folder: Path, limit: int = 400) -> list[dict]:
    """(updates, loss, validation accuracy) points from metrics.jsonl, at most `limit` of them,
    every evaluated point kept."""
    points = []
    try:
        text = (folder / "metrics.jsonl").read_text(errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        # the loss is the learners' last reported one: none before a learner has taken a step
        point = {"updates": row.get("version", 0), "loss": row.get("loss") if row.get("steps") else None}
        if isinstance(row.get("eval"), dict) and "accuracy" in row["eval"]:
            point["accuracy"] = row["eval"]["accuracy"]
        points.append(point)
    if len(points) > limit:
        step = math.ceil(len(points) / limit)
        points = [p for i, p in enumerate(points) if i % step == 0 or "accuracy" in p or i == len(points) - 1]
    return points


class _Job:
    def __init__(self, cid: str, popen: subprocess.Popen, log):
        self.cid, self.popen, self.log = cid, popen, log
        self.started = time.monotonic()
        self.timed_out = False


class Runner:
    """Starts, watches and stops the classifiers' training jobs (see the module docstring)."""

    poll_s = 0.5

    def __init__(self, db: Database, state: Path, max_jobs: int, recipe: Recipe | None = None, log=print):
        self.db, self.state, self.max_jobs = db, Path(state), max_jobs
        self.recipe = recipe or Recipe.from_env()
        self.log = log
        self.jobs: dict[str, _Job] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def folder(self, cid: str) -> Path:
        return self.state / "classifiers" / cid

    @staticmethod
    def job_name(cid: str) -> str:
        return f"serve-{cid}"

    # ---- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        # the jobs are children of this thread: PR_SET_PDEATHSIG fires when the thread that
        # forked a child exits, so the one thread that forks lives as long as the service
        self.thread = threading.Thread(target=self._loop, name="gadei-serve-runner", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Interrupt every running job (each saves a checkpoint) and wait for them; the
        classifiers stay Training and resume at the next start."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()

    def recover(self) -> None:
        """At start: stop leftovers of a killed service, requeue their classifiers, and remove
        shared memory that dead jobs left behind."""
        from gadei.supervisor import sweep_stale
        for rec in self.db.classifiers(status="Training"):
            if rec["pid"] and proc.alive(rec["pid"], rec["pid_start"]):
                # normally already stopping (PR_SET_PDEATHSIG); it saves a checkpoint first
                self.log(f"gadei serve: stopping the leftover job of classifier {rec['id']} (pid {rec['pid']})")
                _stop_foreign(rec["pid"], rec["pid_start"])
            if rec["pid"]:
                self.db.update(rec["id"], pid=0, pid_start=0, status_description="")
        sweep_stale(log=self.log)

    def _loop(self, grace: float = 120.0) -> None:
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception as e:               # never let the queue die with the service up
                self.log(f"gadei serve: training queue error: {type(e).__name__}: {e}")
            self.stopping.wait(self.poll_s)
        # stopping: this thread ends its jobs itself, since its exit would send each one a
        # second SIGTERM (PR_SET_PDEATHSIG) while it is saving its checkpoint
        with self.lock:
            jobs = list(self.jobs.values())
            self.jobs.clear()
        for job in jobs:
            _terminate(job.popen, grace)
            job.log.close()
            self.db.update(job.cid, pid=0, pid_start=0, status_description="")   # waiting again

    def tick(self) -> None:
        with self.lock:
            for cid, job in list(self.jobs.items()):
                code = job.popen.poll()
                if code is None and time.monotonic() - job.started > self.recipe.max_train_s:
                    job.timed_out = True
                    _terminate(job.popen, 30)
                    code = job.popen.returncode
                if code is not None:
                    del self.jobs[cid]
                    job.log.close()
                    self._finished(cid, code, job.timed_out)
            if self.stopping.is_set():
                return
            waiting = [r for r in self.db.classifiers(status="Training") if not r["pid"] and r["id"] not in self.jobs]
            for rec in waiting[:max(0, self.max_jobs - len(self.jobs))]:
                self._start(rec)

    # ---- one job -------------------------------------------------------------------------
    def _start(self, rec: dict) -> None:
        cid, folder = rec["id"], self.folder(rec["id"])
        done = _summary(folder)
        if done is not None and not done.get("interrupted") and (folder / "checkpoint").exists():
            self._available(cid, done)       # finished before the service could record it
            return
        resume = (folder / "checkpoint").exists()
        if not resume:                       # a fresh start: no curve of an earlier attempt
            for name in ("metrics.jsonl", "summary.json"):
                (folder / name).unlink(missing_ok=True)
        cmd = self.recipe.command(folder, self.job_name(cid), rec["planned_updates"], resume)
        log = open(folder / "train.log", "ab")
        log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'}: "
                  f"{' '.join(cmd)}\n".encode())
        log.flush()
        popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=folder, env=_child_env(), start_new_session=True,
                                 preexec_fn=_child_setup(os.getpid()))
        self.jobs[cid] = _Job(cid, popen, log)
        self.db.update(cid, pid=popen.pid, pid_start=proc.start_time(popen.pid),
                       status_description="training" + (" (resumed from its last checkpoint)" if resume else ""))

    def _finished(self, cid: str, code: int, timed_out: bool) -> None:
        rec = self.db.classifier(cid)
        if rec is None:                      # deleted meanwhile
            return
        summary = _summary(self.folder(cid))
        if code == 0 and summary is not None and not summary.get("interrupted"):
            self._available(cid, summary)
        elif self.stopping.is_set() and not timed_out:
            self.db.update(cid, pid=0, pid_start=0, status_description="")   # resumes at the next start
        elif timed_out or rec["attempts"] + 1 >= MAX_ATTEMPTS:
            why = (f"training took longer than {self.recipe.max_train_s:.0f} s" if timed_out else
                   f"training failed {rec['attempts'] + 1} times (exit code {code})")
            self.db.update(cid, status="Failed", pid=0, pid_start=0, attempts=rec["attempts"] + 1,
                           status_description=f"{why}; the end of its log: {_tail(self.folder(cid) / 'train.log')}")
        else:                                # crashed: retried from its last checkpoint
            self.db.update(cid, pid=0, pid_start=0, attempts=rec["attempts"] + 1,
                           status_description=f"training stopped (exit code {code}); waiting to resume")

    def _available(self, cid: str, summary: dict) -> None:
        problems = [f"learner {i}: {p}" for i, e in summary["ledger"].items() for p in L.audit(e)]
        metrics = {"validation": summary.get("final_metrics", {}),
                   "updates": summary["version"], "train_time_s": summary["train_time_s"],
                   "ledger_audit": problems or "ok"}
        self.db.update(cid, status="Available", pid=0, pid_start=0, metrics=metrics,
                       status_description="The classifier is ready: it can classify")

    def cancel(self, cid: str) -> None:
        """Stop `cid`'s job if it runs (its row is already gone) and remove its files."""
        with self.lock:
            job = self.jobs.pop(cid, None)
        if job is not None:
            _terminate(job.popen, 60)
            job.log.close()
        shutil.rmtree(self.folder(cid), ignore_errors=True)

    def progress(self, rec: dict) -> dict:
        done = rec["metrics"].get("updates") if rec["status"] == "Available" else \
            last_metrics(self.folder(rec["id"])).get("version", 0)
        return {"updates_done": done or 0, "updates_planned": rec["planned_updates"]}

    def queue_position(self, cid: str) -> int | None:
        """1 for the next to start, None when running or not waiting."""
        waiting = [r["id"] for r in self.db.classifiers(status="Training") if not r["pid"]]
        return waiting.index(cid) + 1 if cid in waiting else None


def _summary(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "summary.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(lines[-n:])[-1500:]


def _terminate(popen: subprocess.Popen, grace: float) -> None:
    """SIGTERM (the job stops its learners and saves a checkpoint), SIGKILL after `grace` s."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            popen.kill()
    popen.wait()


def _stop_foreign(pid: int, started: int, grace: float = 120.0) -> None:
    """_terminate for a process that is not our child (a killed service's job)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while proc.alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.alive(pid, started):
        os.kill(pid, signal.SIGKILL)
        while proc.alive(pid, started):
            time.sleep(0.1)
