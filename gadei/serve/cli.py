"""`gadei serve` and `gadei tenants`: `add_commands(subparsers)` adds both to gadei's CLI.

    gadei serve [--host 127.0.0.1] [--port 8080] [--state DIR] [--max-jobs K]
    gadei tenants add NAME [--state DIR]        (prints the new key alone on the last line)
    gadei tenants list [--state DIR]
    gadei tenants remove NAME [--state DIR]

The state folder (default: $GADEI_SERVE_STATE, else gadei/serve under the user's data
directory) holds the database and every classifier's job folder; it is created private (0700).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def default_state() -> Path:
    chosen = os.environ.get("GADEI_SERVE_STATE")
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(base).expanduser() / "gadei" / "serve"


def default_max_jobs() -> int:
    """What the cores allow: a job keeps about two busy (two learners; the PS mostly waits)."""
    return max(1, (os.cpu_count() or 2) // 2)


def _state(arg: str | None) -> Path:
    path = Path(arg).expanduser() if arg else default_state()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _db(state: Path):
    from gadei.serve.db import Database
    return Database(state / "gadei-serve.db")


def cmd_serve(args, extra) -> int:
    if extra:
        raise ValueError(f"gadei serve takes no option {' '.join(extra)}")
    if args.max_jobs is not None and args.max_jobs < 1:
        raise ValueError(f"--max-jobs must be at least 1, not {args.max_jobs}")
    import uvicorn
    from contextlib import asynccontextmanager
    import asyncio
    from gadei.serve.app import create_app
    os.umask(0o077)                      # every file of the service and its jobs: the service's user only
    state = _state(args.state)
    app = create_app(state, max_jobs=args.max_jobs or default_max_jobs(),
                     max_classifiers=args.max_classifiers, cache_size=args.cache_size)
    runner = app.state.runner

    @asynccontextmanager
    async def lifespan(_):
        runner.start()
        print(f"gadei serve: state {state}, at most {runner.max_jobs} training(s) at once; "
              f"http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            # SIGTERM / Ctrl-C: uvicorn stops serving, then this stops the trainings, each
            # saving a checkpoint to resume from at the next start
            await asyncio.to_thread(runner.stop)

    app.router.lifespan_context = lifespan
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_tenants(args, extra) -> int:
    if extra:
        raise ValueError(f"gadei tenants takes no option {' '.join(extra)}")
    from gadei.serve import tenants
    if (args.name is None) != (args.action == "list"):
        raise ValueError("gadei tenants add|remove NAME, or gadei tenants list (no name)")
    state = _state(args.state)
    db = _db(state)
    if args.action == "add":
        key = tenants.add(db, args.name)
        print(f"tenant {args.name!r} added; its API key (shown only now; send it as "
              f"'Authorization: Bearer KEY'):")
        print(key)
    elif args.action == "list":
        rows = db.tenants()
        for r in rows:
            print(f"{r['name']}\t{r['classifiers']} classifier(s)")
        if not rows:
            print("no tenants; add one with `gadei tenants add NAME`")
    else:
        for cid in db.remove_tenant(args.name):
            shutil.rmtree(state / "classifiers" / cid, ignore_errors=True)
        print(f"tenant {args.name!r} removed, with its classifiers")
    return 0


def add_commands(sub) -> None:
    """Add `serve` and `tenants` to gadei's argparse subparsers."""
    s = sub.add_parser("serve", help="run the text-classifier service (HTTP API and web page)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--state", help="folder of the database and the classifiers (default: "
                                   "$GADEI_SERVE_STATE or ~/.local/share/gadei/serve)")
    s.add_argument("--max-jobs", type=int, help=f"trainings at once (default: cores / 2, here {default_max_jobs()})")
    s.add_argument("--max-classifiers", type=int, default=8, help="classifiers per tenant")
    s.add_argument("--cache-size", type=int, default=16, help="trained models kept loaded")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(fn=cmd_serve)
    t = sub.add_parser("tenants", help="add, list or remove the service's tenants (API keys)")
    t.add_argument("action", choices=["add", "list", "remove"])
    t.add_argument("name", nargs="?")
    t.add_argument("--state", help="the service's state folder (as for gadei serve)")
    t.set_defaults(fn=cmd_tenants)
