"""`gadei tenants` and the service's database: keys, hashing, migrations."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from gadei.serve import db as D
from gadei.serve import tenants
from tests.serve_helpers import ROOT, env_for


def gadei(*args):
    return subprocess.run([sys.executable, "-m", "gadei", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env_for(None))


@pytest.mark.timeout(120)
def test_tenants_add_list_remove(tmp_path):
    state = tmp_path / "state"
    r = gadei("tenants", "add", "alice", "--state", state)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip().splitlines()[-1]
    assert key.startswith("gadei_") and len(key) > 40
    again = gadei("tenants", "add", "alice", "--state", state)
    assert again.returncode == 2 and "exists already" in again.stderr
    assert gadei("tenants", "add", "../evil", "--state", state).returncode == 2
    database = D.Database(state / "gadei-serve.db")
    assert tenants.authenticate(database, f"Bearer {key}") == "alice"
    assert tenants.authenticate(database, f"Bearer {key}x") is None
    # stored hashed: the key itself is nowhere in the file
    assert key.encode() not in (state / "gadei-serve.db").read_bytes()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "gadei-serve.db").st_mode) == 0o600
    assert gadei("tenants", "list", "--state", state).stdout.startswith("alice\t0 classifier(s)")
    (state / "classifiers" / "c1").mkdir(parents=True)
    database.add_classifier({"id": "c1", "tenant": "alice", "name": "n", "language": "en", "created": 0.0,
                             "status": "Training", "rows": 5, "classes": 2, "planned_updates": 1}, limit=8)
    assert gadei("tenants", "remove", "alice", "--state", state).returncode == 0
    assert database.classifiers() == [] and not (state / "classifiers" / "c1").exists()
    assert tenants.authenticate(database, f"Bearer {key}") is None
    assert gadei("tenants", "remove", "alice", "--state", state).returncode == 2


def test_migrations_bring_an_empty_database_up_to_date_and_refuse_a_newer_one(tmp_path):
    path = tmp_path / "x.db"
    D.Database(path)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == len(D.MIGRATIONS)
    D.Database(path)                                  # idempotent
    with sqlite3.connect(path) as con:
        con.execute(f"PRAGMA user_version = {len(D.MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer than this gadei"):
        D.Database(path)
