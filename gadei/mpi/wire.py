"""What crosses MPI in a gadei job: validated msgpack control messages and raw float32 tensors.

Control messages are msgpack maps with a fixed schema per `op`; every received one is checked
for size, exact keys and types before anything reads it (`unpack`), and never holds extension
types. Tensors travel as raw buffers (`Isend`/`Irecv` of numpy arrays), never pickled. Every
wait is bounded: `wait` polls a request until a deadline and raises `MPITimeout`, since a
receive from a dead rank would otherwise block forever (docs/mpi.md).
"""
from __future__ import annotations

import time

import msgpack

from gadei import ledger as L

CTRL_MAX = 1 << 20          # bytes; a control message carries at most a node's ledger

# tags: leader -> global PS, global PS -> leader, node leader -> its learners
TAG_UP, TAG_UP_DATA, TAG_DOWN, TAG_DOWN_DATA = 11, 12, 13, 14


class ProtocolError(ValueError):
    """A control message that is not what the protocol allows; says which key and why."""


class MPITimeout(RuntimeError):
    """A peer did not answer within the timeout: it is dead, hung, or the network is."""


_TYPES = {"int": int, "float": (int, float), "str": str, "bytes": bytes, "bool": bool,
          "list": list, "dict": dict}

# op -> {key: type name}; every key is required and no other key is allowed
SCHEMAS: dict[str, dict[str, str]] = {
    # a node leader's arena name, broadcast over the node communicator (error: why not)
    "arena": {"op": "str", "name": "str", "error": "str"},
    # leader -> global PS: a sync (n > 0: a tensor of n float32 follows) or a heartbeat (n = 0)
    "sync": {"op": "str", "node": "int", "round": "int", "n": "int", "final": "bool",
             "kind": "str", "ledger": "dict", "stats": "dict"},
    "beat": {"op": "str", "node": "int", "round": "int"},
    # global PS -> leader: the reply to round `round` (n float32 follow; finish: the job is
    # stopping, make the final sync now), or stop the job (a fatal error)
    "reply": {"op": "str", "round": "int", "version": "int", "n": "int", "kind": "str", "finish": "bool"},
    "stop": {"op": "str", "reason": "str"},
}

# one learner's record in a sync's "ledger" (keys: global learner ids as decimal strings), and
# the node's totals with its PS restarts, lost learners and version (gadei/ledger.py)
LEDGER_ENTRY = L.WIRE_RECORD
STATS = {**{k: "int" for k in L.TOTALS}, "ps_restarts": "int", "lost": "int", "version": "int"}


def _reject_ext(code, data):
    raise ProtocolError(f"msgpack extension type {code} is not allowed in a control message")


def _check(obj: dict, schema: dict[str, str], what: str) -> None:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: expected a map, got {type(obj).__name__}")
    missing = [k for k in schema if k not in obj]
    if missing:
        raise ProtocolError(f"{what}: missing key(s) {', '.join(missing)}")
    extra = sorted(str(k) for k in obj if k not in schema)
    if extra:
        raise ProtocolError(f"{what}: unexpected key(s) {', '.join(extra)}")
    for key, tname in schema.items():
        v = obj[key]
        ok = isinstance(v, _TYPES[tname]) and not (tname in ("int", "float") and isinstance(v, bool))
        if not ok:
            raise ProtocolError(f"{what}: key {key!r} must be {tname}, got {type(v).__name__} {v!r:.40}")


def _check_ints(v, what: str, depth: int) -> None:
    """v is a list of ints (depth 1) or of [int, int] pairs (depth 2)."""
    for x in v:
        if depth == 2:
            if not (isinstance(x, list) and len(x) == 2):
                raise ProtocolError(f"{what}: expected [first, last] pairs, got {x!r:.40}")
            _check_ints(x, what, 1)
        elif not isinstance(x, int) or isinstance(x, bool):
            raise ProtocolError(f"{what}: expected integers, got {type(x).__name__}")


def validate(msg, expect: tuple[str, ...], who: str = "peer") -> dict:
    """Check a decoded control message against the schema of its op (one of `expect`)."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"control message from {who}: expected a map, got {type(msg).__name__}")
    op = msg.get("op")
    if op not in expect:
        raise ProtocolError(f"control message from {who}: op {op!r} is not one of {', '.join(expect)}")
    what = f"{op} message from {who}"
    _check(msg, SCHEMAS[op], what)
    if op == "sync":
        if msg["n"] < 0 or msg["kind"] not in ("delta", "weights", "none"):
            raise ProtocolError(f"{what}: bad n {msg['n']} or kind {msg['kind']!r}")
        for gid, entry in msg["ledger"].items():
            if not (gid.isascii() and gid.isdigit()):
                raise ProtocolError(f"{what}: ledger key {gid!r} is not a learner id")
            _check(entry, LEDGER_ENTRY, f"{what}, learner {gid}")
            for k in ("rejected", "discarded", "progress"):
                _check_ints(entry[k], f"{what}, learner {gid} {k}", 1)
            if len(entry["progress"]) != 3:
                raise ProtocolError(f"{what}, learner {gid}: progress must be [step, epoch, samples]")
        _check(msg["stats"], STATS, f"{what} stats")
    if op == "reply" and (msg["n"] < 0 or msg["kind"] not in ("centre", "elastic", "none")):
        raise ProtocolError(f"{what}: bad n {msg['n']} or kind {msg['kind']!r}")
    return msg


def pack(msg: dict) -> bytes:
    """Encode a control message, checking it against its schema first (bad ones never leave)."""
    validate(msg, (msg.get("op"),), "this process")
    blob = msgpack.packb(msg, use_bin_type=True)
    if len(blob) > CTRL_MAX:
        raise ProtocolError(f"{msg['op']} message of {len(blob)} bytes exceeds the {CTRL_MAX}-byte limit")
    return blob


def unpack(blob, expect: tuple[str, ...], who: str = "peer") -> dict:
    """Decode and validate a received control message; ProtocolError says what is wrong."""
    if len(blob) > CTRL_MAX:
        raise ProtocolError(f"control message from {who} of {len(blob)} bytes exceeds the "
                            f"{CTRL_MAX}-byte limit")
    try:
        msg = msgpack.unpackb(bytes(blob), ext_hook=_reject_ext, strict_map_key=True, raw=False,
                              use_list=True)
    except ProtocolError as e:                   # an extension type
        raise ProtocolError(f"control message from {who}: {e}") from None
    except Exception as e:
        raise ProtocolError(f"control message from {who} is not valid msgpack ({e})") from None
    return validate(msg, expect, who)


def wait(req, deadline: float, what: str, on_idle=None):
    """Poll request `req` (or a list of them) until done; MPITimeout past `deadline`
    (time.monotonic()). `on_idle` runs between polls (e.g. serving other peers)."""
    reqs = req if isinstance(req, list) else [req]
    sleep, spins = 0.0, 0
    while True:
        if all(r.Test() for r in reqs):
            return
        spins += 1
        if spins < 200:          # a message already on its way: poll it in before sleeping
            continue
        if time.monotonic() > deadline:
            for r in reqs:
                try:
                    r.Cancel()
                except Exception:
                    pass
            raise MPITimeout(f"timed out waiting for {what}")
        if on_idle is not None:
            on_idle()
        sleep = min(0.001, sleep * 2 or 20e-6)
        time.sleep(sleep)
