"""Serving speed of `gadei serve`: requests/s and p50/p99 latency of classify and
classify_collection (30 texts) at 1, 4 and 16 concurrent clients, against calling the same
loaded model in-process (the floor), in one run.

    python -m bench.serve [--csv train.csv] [--seconds 5] [--out bench-serve.json]

It starts `gadei serve` on a fresh state folder and a loopback port, trains one classifier
with the service's own recipe (on --csv, default a generated 600-row set), then measures.
Clients are threads of this process, each with its own HTTP connection (requests.Session),
sending back to back for --seconds per cell; on a small machine they share the cores with the
server, so the HTTP rows are what one machine does as client and server together.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def generated_rows(n: int = 600, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    filler = "the a my please now today river stone cloud paper light road city".split()
    marks = {"weather": "rain", "music": "song", "money": "bank", "travel": "flight", "food": "dinner"}
    rows = []
    for i in range(n):
        label = list(marks)[i % len(marks)]
        words = rng.sample(filler, 5)
        words.insert(rng.randrange(6), marks[label])
        rows.append((" ".join(words), label))
    return rows


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def cell(latencies: list[float], wall: float, texts_per_request: int) -> dict:
    return {"requests": len(latencies), "requests_per_s": round(len(latencies) / wall, 1),
            "texts_per_s": round(len(latencies) * texts_per_request / wall, 1),
            "p50_ms": round(1000 * percentile(latencies, 0.50), 2), "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
            "mean_ms": round(1000 * statistics.fmean(latencies), 2)}


def in_process(folder: Path, texts: list[str], batch: int, seconds: float) -> dict:
    from gadei.serve.models import Loaded
    model = Loaded(folder)
    lat, t0, i = [], time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
        t = time.perf_counter()
        model.classify(chunk)
        lat.append(time.perf_counter() - t)
        i += batch
    return cell(lat, time.perf_counter() - t0, batch)


def over_http(url: str, key: str, cid: str, texts: list[str], batch: int, clients: int, seconds: float) -> dict:
    path = f"{url}/v1/classifiers/{cid}/" + ("classify" if batch == 1 else "classify_collection")
    lats: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def client(c: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        i = c * 7
        start.wait()
        while not stop.is_set():
            chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
            body = {"text": chunk[0]} if batch == 1 else {"collection": [{"text": t} for t in chunk]}
            t = time.perf_counter()
            r = session.post(path, json=body, timeout=120)
            lats[c].append(time.perf_counter() - t)
            r.raise_for_status()
            i += batch

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return cell([x for xs in lats for x in xs], time.perf_counter() - t0, batch)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", help="training CSV (text,class); default: a generated 600-row set")
    p.add_argument("--seconds", type=float, default=5.0, help="per measured cell")
    p.add_argument("--out", default="bench-serve.json")
    a = p.parse_args(argv)
    if a.csv:
        data = Path(a.csv).read_bytes()
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    else:
        rows = generated_rows()
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerows(rows)
        data = buf.getvalue().encode()
    texts = [t for t, _ in rows]

    state = Path(tempfile.mkdtemp(prefix="gadei-bench-serve-")) / "state"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    gadei = [sys.executable, "-m", "gadei"]
    key = subprocess.run(gadei + ["tenants", "add", "bench", "--state", str(state)], capture_output=True, text=True,
                         check=True, env=env, cwd=ROOT).stdout.strip().splitlines()[-1]
    log = state.parent / "serve.log"
    server = subprocess.Popen(gadei + ["serve", "--state", str(state), "--port", "0"],
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        while not (m := re.search(r"Uvicorn running on (http://\S+)", log.read_text())):
            if server.poll() is not None:
                raise SystemExit(f"gadei serve exited:\n{log.read_text()}")
            time.sleep(0.1)
        url = m.group(1)
        auth = {"Authorization": f"Bearer {key}"}
        r = requests.post(f"{url}/v1/classifiers", headers=auth, files={
            "training_data": ("train.csv", data), "training_metadata": ("m.json", '{"name": "bench"}')})
        r.raise_for_status()
        cid = r.json()["classifier_id"]
        t0 = time.monotonic()
        while (got := requests.get(f"{url}/v1/classifiers/{cid}", headers=auth).json())["status"] == "Training":
            time.sleep(1)
        if got["status"] != "Available":
            raise SystemExit(f"training failed: {got}")
        print(f"trained on {len(rows)} rows in {time.monotonic() - t0:.0f} s; validation {got['metrics']['validation']}",
              flush=True)
        # warm up: the first classify loads the model into the service's cache
        requests.post(f"{url}/v1/classifiers/{cid}/classify", headers=auth, json={"text": texts[0]}).raise_for_status()

        results = []
        for endpoint, batch in (("classify", 1), ("classify_collection", 30)):
            res = in_process(state / "classifiers" / cid, texts, batch, a.seconds)
            results.append({"endpoint": endpoint, "how": "in-process (floor)", "clients": 1, **res})
            print(json.dumps(results[-1]), flush=True)
            for clients in (1, 4, 16):
                res = over_http(url, key, cid, texts, batch, clients, a.seconds)
                results.append({"endpoint": endpoint, "how": "HTTP", "clients": clients, **res})
                print(json.dumps(results[-1]), flush=True)
    finally:
        server.terminate()
        server.wait()

    print("\n| endpoint | how | clients | requests/s | texts/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['endpoint']} | {r['how']} | {r['clients']} | {r['requests_per_s']} | {r['texts_per_s']} | "
              f"{r['p50_ms']} | {r['p99_ms']} |")
    config = {"csv": a.csv or "generated (600 rows, 5 classes)", "rows": len(rows), "seconds_per_cell": a.seconds,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(a.out).write_text(json.dumps({"config": config, "results": results}, indent=1))
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
