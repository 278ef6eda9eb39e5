"""The service's state: one SQLite file under the state folder, schema versioned by migrations.

`PRAGMA user_version` holds the number of migrations applied; `open_db` applies the missing
ones in order, each in one transaction, so a database of any earlier version (or none) is
brought up to date at start. Add a migration by appending to MIGRATIONS; never edit one that
has shipped.

Every operation opens its own short-lived connection (`connect`): the service's request
threads, its training queue and the `gadei tenants` command share the file through SQLite's
own locking, with WAL so readers never wait on the writer.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path

MIGRATIONS = [
    # 1: tenants (API keys stored as sha256 hex) and their classifiers. `status` is the Watson
    # status (Training, Available, Failed); `queued` orders the training queue; `pid` and
    # `pid_start` identify the running `gadei train` process (0 when none).
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        created REAL NOT NULL
    );
    CREATE TABLE classifiers (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        language TEXT NOT NULL,
        created REAL NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('Training', 'Available', 'Failed')),
        status_description TEXT NOT NULL DEFAULT '',
        rows INTEGER NOT NULL,
        classes INTEGER NOT NULL,
        planned_updates INTEGER NOT NULL,
        queued INTEGER NOT NULL,
        pid INTEGER NOT NULL DEFAULT 0,
        pid_start INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        metrics TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX classifiers_by_tenant ON classifiers(tenant);
    CREATE INDEX classifiers_by_status ON classifiers(status, queued);
    """,
]

CLASSIFIER_FIELDS = ("id", "tenant", "name", "language", "created", "status", "status_description",
                     "rows", "classes", "planned_updates", "queued", "pid", "pid_start", "attempts",
                     "metrics")


class Database:
    """The state folder's database; methods are the service's only queries."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            # created private: it holds the tenants' key hashes
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as con:
            con.execute("PRAGMA journal_mode = WAL")
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this gadei "
                                   f"({len(MIGRATIONS)}): upgrade gadei")
            for number in range(version, len(MIGRATIONS)):
                con.executescript(f"BEGIN; {MIGRATIONS[number]} PRAGMA user_version = {number + 1}; COMMIT;")

    @contextmanager
    def connect(self, write: bool = True):
        """A connection in a transaction: committed when the block ends, rolled back on error.
        A writing one takes SQLite's write lock at once (IMMEDIATE), so its reads and writes
        cannot interleave with another writer's; a reading one takes no lock (WAL)."""
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as con:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # ---- tenants ---------------------------------------------------------------------------
    def add_tenant(self, name: str, key_hash: str) -> None:
        with self.connect() as con:
            if con.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"tenant {name!r} exists already; remove it first or pick another name")
            con.execute("INSERT INTO tenants VALUES (?, ?, ?)", (name, key_hash, time.time()))

    def remove_tenant(self, name: str) -> list[str]:
        """Remove tenant `name`; return the ids of its classifiers (removed with it)."""
        with self.connect() as con:
            if not con.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"no tenant {name!r}")
            ids = [r[0] for r in con.execute("SELECT id FROM classifiers WHERE tenant = ?", (name,))]
            con.execute("DELETE FROM tenants WHERE name = ?", (name,))
            return ids

    def tenants(self) -> list[dict]:
        with self.connect(write=False) as con:
            return [dict(r) for r in con.execute(
                "SELECT t.name, t.created, COUNT(c.id) AS classifiers FROM tenants t "
                "LEFT JOIN classifiers c ON c.tenant = t.name GROUP BY t.name ORDER BY t.name")]

    def tenant_by_key_hash(self, key_hash: str) -> str | None:
        with self.connect(write=False) as con:
            row = con.execute("SELECT name FROM tenants WHERE key_hash = ?", (key_hash,)).fetchone()
            return row[0] if row else None

    # ---- classifiers -----------------------------------------------------------------------
    def add_classifier(self, rec: dict, limit: int) -> bool:
        """Insert `rec` unless its tenant already has `limit` classifiers (then False)."""
        with self.connect() as con:
            n = con.execute("SELECT COUNT(*) FROM classifiers WHERE tenant = ?", (rec["tenant"],)).fetchone()[0]
            if n >= limit:
                return False
            rec = {**rec, "queued": con.execute("SELECT COALESCE(MAX(queued), 0) + 1 FROM classifiers").fetchone()[0]}
            fields = [f for f in CLASSIFIER_FIELDS if f in rec]
            con.execute(f"INSERT INTO classifiers ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
                        [rec[f] for f in fields])
            return True

    def classifier(self, cid: str, tenant: str | None = None) -> dict | None:
        """The classifier `cid`; with `tenant`, only if that tenant owns it."""
        with self.connect(write=False) as con:
            row = con.execute("SELECT * FROM classifiers WHERE id = ?", (cid,)).fetchone()
        if row is None or tenant is not None and row["tenant"] != tenant:
            return None
        return _record(row)

    def classifiers(self, tenant: str | None = None, status: str | None = None) -> list[dict]:
        """Classifiers (of `tenant`, with `status`) in queue order."""
        where, args = [], []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = "SELECT * FROM classifiers" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY queued"
        with self.connect(write=False) as con:
            return [_record(r) for r in con.execute(sql, args)]

    def update(self, cid: str, **fields) -> None:
        unknown = set(fields) - set(CLASSIFIER_FIELDS)
        if unknown:
            raise ValueError(f"no classifier field {', '.join(sorted(unknown))}")
        if "metrics" in fields:
            fields["metrics"] = json.dumps(fields["metrics"])
        with self.connect() as con:
            con.execute(f"UPDATE classifiers SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                        [*fields.values(), cid])

    def delete(self, cid: str) -> None:
        with self.connect() as con:
            con.execute("DELETE FROM classifiers WHERE id = ?", (cid,))


def _record(row: sqlite3.Row) -> dict:
    rec = dict(row)
    rec["metrics"] = json.loads(rec["metrics"])
    return rec
