"""`gadei serve` end to end: a real uvicorn process on a loopback port, real SQLite, real
`gadei train` jobs; isolation between tenants, limits, the queue, and restarts (SIGTERM and
kill -9) with the ledger audit of the resumed job."""
from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import time
from urllib.parse import urlparse

import pytest

from gadei import ledger as L
from gadei import proc, shm
from tests.serve_helpers import FAST, Service, add_tenant, generated_csv

# a recipe no job can finish within a test's life: a classifier stays Training by construction
ENDLESS = {"min_updates": 10**7, "max_updates": 10**7, "checkpoint_every": 20, "eval_every": 0.0}


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def folder(state, cid):
    return state / "classifiers" / cid


def summary(state, cid):
    return json.loads((folder(state, cid) / "summary.json").read_text())


def job_pid(state, cid) -> int:
    with sqlite3.connect(state / "gadei-serve.db") as con:
        return con.execute("SELECT pid FROM classifiers WHERE id = ?", (cid,)).fetchone()[0]


@pytest.mark.timeout(120)
def test_keys_errors_and_the_api_description(state):
    key = add_tenant(state, "alice")
    s = Service(state).start()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}, {"Authorization": "Basic " + key}):
            r = s.call("GET", "/v1/classifiers", headers=headers)
            assert r.status_code == 401 and set(r.json()) == {"code", "error", "description"}, r.text
        assert s.call("GET", "/v1/classifiers", key).json() == {"classifiers": []}
        r = s.call("GET", "/v1/classifiers/0123456789abcdef", key)
        assert r.status_code == 404 and r.json()["code"] == 404
        assert s.call("POST", "/v1/classifiers/0123456789abcdef/classify", key, json={"text": "x"}).status_code == 404
        assert s.call("DELETE", "/v1/classifiers/0123456789abcdef", key).status_code == 404
        paths = s.call("GET", "/openapi.json").json()["paths"]
        assert {"/v1/classifiers", "/v1/classifiers/{cid}", "/v1/classifiers/{cid}/classify",
                "/v1/classifiers/{cid}/classify_collection"} <= set(paths)
        assert "multipart/form-data" in paths["/v1/classifiers"]["post"]["requestBody"]["content"]
        assert "<title>gadei serve</title>" in s.call("GET", "/").text
        # 413 from the declared length alone: no 40 MB body needs to be sent
        u = urlparse(s.url)
        con = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        con.putrequest("POST", "/v1/classifiers")
        con.putheader("Authorization", f"Bearer {key}")
        con.putheader("Content-Type", "multipart/form-data; boundary=x")
        con.putheader("Content-Length", str(40 * 1024 * 1024))
        con.endheaders()
        r = con.getresponse()
        assert r.status == 413 and json.loads(r.read())["code"] == 413
        con.close()
    finally:
        s.stop()


def csv_lines(rows):
    return ("\n".join(rows) + "\n").encode()


GOOD = [f"question {i} about things,C{i % 3}" for i in range(30)]
MALFORMED = {
    "wrong column count": (csv_lines(GOOD[:3] + ["a,b,c"] + GOOD[3:]), "line 4: expected 2 columns"),
    "empty text": (csv_lines(GOOD[:5] + ['"",C1'] + GOOD[5:]), "line 6: the text is empty"),
    "one class only": (csv_lines([f"q {i},ONLY" for i in range(30)]), "too few classes: 1"),
    "non-UTF-8 byte": (csv_lines(GOOD[:7]) + b"caf\xe9 au lait,C1\n", "line 8: byte 0xe9 is not UTF-8"),
    "20,001 rows": (csv_lines([f"q {i},C{i % 2}" for i in range(20_001)]), "too many rows: more than 20,000"),
    "too few rows": (csv_lines(GOOD[:4]), "too few rows: 4"),
    "a text over 1,024 characters": (csv_lines(GOOD[:2] + ["x" * 1025 + ",C1"] + GOOD[2:]), "line 3: the text has 1025"),
}


@pytest.mark.timeout(180)
def test_malformed_uploads_are_400_naming_the_problem_and_create_nothing(state):
    key = add_tenant(state, "alice")
    s = Service(state).start()
    try:
        for what, (data, problem) in MALFORMED.items():
            r = s.upload(key, data)
            assert r.status_code == 400 and problem in r.json()["description"], (what, r.text)
        r = s.call("POST", "/v1/classifiers", key, files={"training_data": ("t.csv", csv_lines(GOOD))})
        assert r.status_code == 400 and "training_metadata is missing" in r.json()["description"]
        r = s.call("POST", "/v1/classifiers", key, files={"training_metadata": ("m.json", '{"name": "x"}')})
        assert r.status_code == 400 and "training_data" in r.json()["description"]
        r = s.call("POST", "/v1/classifiers", key, files={"training_data": ("t.csv", csv_lines(GOOD)),
                                                          "training_metadata": ("m.json", '{"name": "x", "language": "xx"}')})
        assert r.status_code == 400 and "not supported" in r.json()["description"]
        assert s.call("GET", "/v1/classifiers", key).json() == {"classifiers": []}
        assert not (state / "classifiers").exists() or not any((state / "classifiers").iterdir())
    finally:
        s.stop()


@pytest.mark.timeout(300)
def test_train_classify_and_tenant_isolation(state):
    alice, bob = add_tenant(state, "alice"), add_tenant(state, "bob")
    s = Service(state, FAST).start()
    try:
        r = s.upload(alice, generated_csv(), name="weather or not")
        assert r.status_code == 201, r.text
        created = r.json()
        assert set(created) == {"classifier_id", "name", "language", "created", "status", "url"}
        assert created["status"] == "Training" and created["name"] == "weather or not"
        cid = created["classifier_id"]
        # another tenant cannot see, read, classify with or delete it: 404 as for an unknown id
        assert s.call("GET", "/v1/classifiers", bob).json() == {"classifiers": []}
        for method, path, body in (("GET", "", None), ("POST", "/classify", {"text": "rain"}),
                                   ("POST", "/classify_collection", {"collection": [{"text": "rain"}]}),
                                   ("GET", "/training_curve", None), ("DELETE", "", None)):
            r = s.call(method, f"/v1/classifiers/{cid}{path}", bob, json=body)
            assert r.status_code == 404, (method, path, r.text)
        assert [c["classifier_id"] for c in s.call("GET", "/v1/classifiers", alice).json()["classifiers"]] == [cid]

        got = s.wait_status(alice, cid, "Available")
        assert got["training"]["updates_done"] == got["training"]["updates_planned"] == 40
        assert got["metrics"]["ledger_audit"] == "ok" and 0 <= got["metrics"]["validation"]["accuracy"] <= 1
        curve = s.call("GET", f"/v1/classifiers/{cid}/training_curve", alice).json()["points"]
        assert curve[-1]["updates"] == 40 and "accuracy" in curve[-1]

        r = s.call("POST", f"/v1/classifiers/{cid}/classify", alice, json={"text": "stone rain cloud"}).json()
        assert r["classifier_id"] == cid and r["text"] == "stone rain cloud"
        names = [c["class_name"] for c in r["classes"]]
        assert sorted(names) == ["money", "music", "weather"] and r["top_class"] == names[0]
        confidences = [c["confidence"] for c in r["classes"]]
        assert confidences == sorted(confidences, reverse=True) and sum(confidences) <= 1 + 1e-5
        texts = ["a song on the road", "bank paper", "rain rain"]
        r = s.call("POST", f"/v1/classifiers/{cid}/classify_collection", alice,
                   json={"collection": [{"text": t} for t in texts]}).json()
        assert [c["text"] for c in r["collection"]] == texts
        # the generated set is separable by one word: a trained classifier gets these right
        assert [c["top_class"] for c in r["collection"]] == ["music", "money", "weather"]
        for body in ({"collection": [{"text": "x"}] * 31}, {"collection": []}, {"text": ""}, {"text": "x" * 1025}):
            path = "/classify_collection" if "collection" in body else "/classify"
            r = s.call("POST", f"/v1/classifiers/{cid}{path}", alice, json=body)
            assert r.status_code == 400 and r.json()["code"] == 400, (body, r.text)

        assert s.call("DELETE", f"/v1/classifiers/{cid}", alice).status_code == 200
        assert s.call("GET", f"/v1/classifiers/{cid}", alice).status_code == 404
        assert not folder(state, cid).exists()
    finally:
        s.stop()


@pytest.mark.timeout(400)
def test_limit_queue_409_delete_while_training_and_sigterm_resume(state):
    key = add_tenant(state, "alice")
    s = Service(state, ENDLESS, "--max-jobs", "1", "--max-classifiers", "2").start()
    try:
        a, b = (s.upload(key, generated_csv(seed=i)).json()["classifier_id"] for i in (1, 2))
        r = s.upload(key, generated_csv(seed=3))
        assert r.status_code == 429 and "at most 2" in r.json()["description"]
        r = s.call("POST", f"/v1/classifiers/{a}/classify", key, json={"text": "rain"})
        assert r.status_code == 409 and r.json()["code"] == 409
        # one job at a time, and a never ends: once a runs, b waits first in the queue
        while not job_pid(state, a):
            time.sleep(0.2)
        assert s.call("GET", f"/v1/classifiers/{b}", key).json()["status_description"] == \
            "waiting to train: number 1 in the queue"
        assert s.call("DELETE", f"/v1/classifiers/{a}", key).status_code == 200     # stops its job
        assert not folder(state, a).exists() and not shm.segments(f"serve-{a}")
        # b starts now; stop the service once b has a checkpoint: b saves another and stays Training
        while not (folder(state, b) / "checkpoint").exists():
            time.sleep(0.2)
        s.stop()
        assert summary(state, b)["interrupted"] is True
        assert not shm.segments(f"serve-{b}")
        s.start()
        assert s.call("GET", f"/v1/classifiers/{b}", key).json()["status"] == "Training"
        log = folder(state, b) / "train.log"
        while "resume:" not in log.read_text():
            time.sleep(0.2)
        while not job_pid(state, b):
            time.sleep(0.2)
        assert s.call("DELETE", f"/v1/classifiers/{b}", key).status_code == 200
    finally:
        s.stop()
    assert not shm.segments(f"serve-{a}") and not shm.segments(f"serve-{b}")


@pytest.mark.timeout(600)
def test_kill_9_during_training_then_restart_resumes_with_exactly_once(state):
    key = add_tenant(state, "alice")
    recipe = {"min_updates": 300, "max_updates": 300, "checkpoint_every": 20, "eval_every": 0.0}
    s = Service(state, recipe).start()
    cid = s.upload(key, generated_csv(rows=90)).json()["classifier_id"]
    while not (folder(state, cid) / "checkpoint").exists():
        time.sleep(0.1)
    # the whole service and its job's supervisor killed at once, as a power cut would
    job = job_pid(state, cid)
    started = proc.start_time(job)
    os.kill(job, signal.SIGKILL)       # first: so it cannot save a checkpoint on the service's death
    s.popen.kill()
    s.popen.wait()
    while proc.alive(job, started):
        time.sleep(0.1)
    assert not (folder(state, cid) / "summary.json").exists(), "the job finished before the kill"
    try:
        s.start()
        got = s.wait_status(key, cid, "Available")
    finally:
        s.stop()
    done = summary(state, cid)
    assert done["settings"]["resume"] == str(folder(state, cid)) and not done["interrupted"]
    assert done["updates_applied"] == got["training"]["updates_done"] == 300
    for i, entry in done["ledger"].items():
        assert L.audit(entry) == [], (i, entry)
        assert entry["incarnations"] == 2
    assert got["metrics"]["ledger_audit"] == "ok"
    assert not shm.segments(f"serve-{cid}")


@pytest.mark.timeout(600)
def test_a_crashing_job_fails_alone_and_the_queue_goes_on(state):
    """A classifier whose job cannot run (its stored CSV is broken behind the service's back)
    is retried, then marked Failed with its log; the one queued after it still trains."""
    from gadei.serve.db import Database
    key = add_tenant(state, "alice")
    db = Database(state / "gadei-serve.db")
    bad = "badbadbadbadbad0"
    folder(state, bad).mkdir(parents=True)
    (folder(state, bad) / "training.csv").write_text("one,two,three\n")
    db.add_classifier({"id": bad, "tenant": "alice", "name": "broken", "language": "en", "created": time.time(),
                       "status": "Training", "rows": 1, "classes": 1, "planned_updates": 40}, limit=8)
    s = Service(state, FAST, "--max-jobs", "1").start()
    try:
        good = s.upload(key, generated_csv()).json()["classifier_id"]
        failed = s.wait_status(key, bad, "Failed")
        assert "failed 3 times" in failed["status_description"] and "expected 2 columns" in failed["status_description"]
        assert s.wait_status(key, good, "Available")["metrics"]["ledger_audit"] == "ok"
        r = s.call("POST", f"/v1/classifiers/{bad}/classify", key, json={"text": "x"})
        assert r.status_code == 409
    finally:
        s.stop()
