"""Running `gadei serve` in tests: a real uvicorn process on a loopback port, real tenants."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
# the tiny recipe of the tests: a generated CSV of 60 rows learns in 40 updates
FAST = {"min_updates": 40, "max_updates": 40, "checkpoint_every": 10, "eval_every": 1.0}


def env_for(recipe: dict | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if recipe is not None:
        env["GADEI_SERVE_RECIPE"] = json.dumps(recipe)
    return env


def add_tenant(state: Path, name: str) -> str:
    """`gadei tenants add NAME`; its key is alone on the last line."""
    r = subprocess.run([sys.executable, "-m", "gadei", "tenants", "add", name, "--state", str(state)],
                       capture_output=True, text=True, cwd=ROOT, env=env_for(None), check=True)
    return r.stdout.strip().splitlines()[-1]


def generated_csv(rows: int = 60, seed: int = 0) -> bytes:
    """Three classes, each marked by its own word among shared filler words."""
    rng = random.Random(seed)
    filler = "alpha beta gamma delta river stone cloud paper light road".split()
    marks = {"weather": "rain", "music": "song", "money": "bank"}
    lines = []
    for i in range(rows):
        label = list(marks)[i % 3]
        words = rng.sample(filler, 4)
        words.insert(rng.randrange(5), marks[label])
        lines.append(f'"{" ".join(words)}, ok",{label}')
    return ("\n".join(lines) + "\n").encode()


class Service:
    """`python -m gadei serve --port 0` in a subprocess; `url` once it listens."""

    def __init__(self, state: Path, recipe: dict | None = None, *args: str):
        self.state, self.recipe, self.args = Path(state), recipe, [str(a) for a in args]
        self.log_path = self.state.parent / f"{self.state.name}-serve.log"
        self.popen: subprocess.Popen | None = None
        self.url = None

    def start(self) -> "Service":
        log = open(self.log_path, "ab")
        start = self.log_path.stat().st_size
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gadei", "serve", "--state", str(self.state), "--port", "0", *self.args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=env_for(self.recipe))
        log.close()
        while True:                    # bounded by the test's timeout
            text = self.log_path.read_bytes()[start:].decode(errors="replace")
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", text)
            if m:
                self.url = m.group(1)
                return self
            if self.popen.poll() is not None:
                raise RuntimeError(f"gadei serve exited with {self.popen.returncode}:\n{text}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.popen.send_signal(sig)
        return self.popen.wait()

    def call(self, method: str, path: str, key: str | None = None, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return requests.request(method, self.url + path, headers=headers, timeout=120, **kw)

    def upload(self, key: str, data: bytes, name: str = "test") -> requests.Response:
        return self.call("POST", "/v1/classifiers", key, files={
            "training_data": ("train.csv", data, "text/csv"),
            "training_metadata": ("meta.json", json.dumps({"name": name, "language": "en"}), "application/json")})

    def wait_status(self, key: str, cid: str, status: str) -> dict:
        """Poll until classifier `cid` has `status` (bounded by the test's timeout)."""
        while True:
            got = self.call("GET", f"/v1/classifiers/{cid}", key).json()
            if got["status"] == status:
                return got
            assert got["status"] == "Training", got
            time.sleep(0.3)
