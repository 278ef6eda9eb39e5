"""The arena: one shared-memory segment per job holding everything the PS and learners share.

Layout of the segment (byte offsets; every region page aligned)::

    0        header   magic, format version, meta length, layout digest (32 bytes)
    64       meta     msgpack: job id, layout, job configuration (read by every role)
    CTL      words    atomic uint64 control words: global, one block per learner, one per slot
    BUF[b]   buffer b of BUFFERS: ledger (fixed int64 words, gadei.ledger.Tally) | weights
             (P float32) | optimizer state
    SLOT     gradient slots: learners x slots x P float32

Version v of the weights lives in buffer v % BUFFERS; the word PUB holds the published
version. See docs/protocol.md for the protocol these regions carry.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
import time
from dataclasses import dataclass, field

import msgpack
import numpy as np

from gadei import ledger as L
from gadei import proc, shm
from gadei.atomic import AtomicWords

MAGIC = b"GADEIPS\x01"
FORMAT = 4   # 2: the owner holds a flock on the segment (shm.owned); 3: the ledger in fixed words;
             # 4: staggered regions (Note [staggered regions])
PAGE = mmap.PAGESIZE
META_MAX = 64 * 1024 - 64
BUFFERS = 3  # three, so a pull has two full update periods to copy a version (see pull())

# global control words
PUB, PS_INCARNATION, PS_PID, PS_START, PS_BEAT, STOP, OWNER_PID, OWNER_START, HOLD, PS_BUSY_NS, \
    PS_STOP = range(11)   # STOP: learners stop; PS_STOP: the PS stops once nothing is READY
GLOBAL_WORDS = 16
# per-learner words (L_DATA_EPOCH: passes over the learner's data; *_NS: time spent, summed)
L_PID, L_START, L_BEAT, L_INCARNATION, L_NEXT_SEQ, L_STEP, L_DATA_EPOCH, L_LOSS, L_SAMPLES, L_DONE, \
    L_PULLED, L_PULL_NS, L_WAIT_NS, L_PUSH_NS, L_STEP_NS = range(15)
LEARNER_WORDS = 16
# per-slot words
S_CTRL, S_VERSION, S_KIND, S_STEP, S_DATA_EPOCH, S_UNUSED, S_SAMPLES = range(7)   # S_UNUSED: was the norm
SLOT_WORDS = 8

# slot states, in the low two bits of S_CTRL; the sequence number in the others
FREE, WRITING, READY = 0, 1, 2
STATE_NAMES = {FREE: "FREE", WRITING: "WRITING", READY: "READY"}
# slot kinds
GRADIENT, DELTA = 0, 1
KIND_NAMES = {GRADIENT: "GRADIENT", DELTA: "DELTA"}


def ctrl(state: int, seq: int) -> int:
    """A slot's control word: state in the low 2 bits, seq + 1 above (0 = never used)."""
    return ((seq + 1) << 2) | state


def ctrl_state(word: int) -> int:
    return word & 3


def ctrl_seq(word: int) -> int:
    """The sequence number in a control word; -1 for a slot never used."""
    return (word >> 2) - 1


def f64_bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def bits_f64(w: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", w))[0]


def now_ns() -> int:
    """CLOCK_MONOTONIC is system-wide on Linux, so heartbeats compare across processes."""
    return time.monotonic_ns()


class _Word:
    """A named atomic word of a block: reading it loads (acquire), assigning stores (release)."""

    def __init__(self, index: int):
        self.index = index

    def __get__(self, block, owner=None):
        return self if block is None else block._ctl.load(block._base + self.index)

    def __set__(self, block, value: int) -> None:
        block._ctl.store(block._base + self.index, value)


class _Block:
    def __init__(self, ctl: AtomicWords, base: int):
        self._ctl, self._base = ctl, base

    def index(self, name: str) -> int:
        """The absolute index of word `name`, for a fenced load or a compare-and-swap."""
        return self._base + getattr(type(self), name).index


class JobWords(_Block):
    """The job's words: the published version, the PS's lease, the owner, stop flags."""
    published = _Word(PUB)                  # the version a pull takes
    ps_incarnation = _Word(PS_INCARNATION)  # PS processes started so far
    ps_pid, ps_start, ps_beat = _Word(PS_PID), _Word(PS_START), _Word(PS_BEAT)
    stop = _Word(STOP)
    owner_pid, owner_start = _Word(OWNER_PID), _Word(OWNER_START)
    hold = _Word(HOLD)                      # free for tests of the atomics
    ps_busy_ns = _Word(PS_BUSY_NS)
    ps_stop = _Word(PS_STOP)


class LearnerWords(_Block):
    """One learner's words: lease, sequence numbers, progress, time counters."""
    pid, start, beat = _Word(L_PID), _Word(L_START), _Word(L_BEAT)
    incarnation = _Word(L_INCARNATION)
    next_seq = _Word(L_NEXT_SEQ)
    step, data_epoch = _Word(L_STEP), _Word(L_DATA_EPOCH)
    loss = _Word(L_LOSS)                    # f64 bits
    samples = _Word(L_SAMPLES)
    done = _Word(L_DONE)
    pulled = _Word(L_PULLED)                # the version it last pulled
    pull_ns, wait_ns, push_ns, step_ns = _Word(L_PULL_NS), _Word(L_WAIT_NS), _Word(L_PUSH_NS), _Word(L_STEP_NS)


class SlotHeader(_Block):
    """One gradient slot's words: its control word (state and seq) and the payload's meta."""
    ctrl = _Word(S_CTRL)
    version = _Word(S_VERSION)              # the weights' version the payload was computed from
    kind = _Word(S_KIND)
    step, data_epoch = _Word(S_STEP), _Word(S_DATA_EPOCH)
    samples = _Word(S_SAMPLES)


def _align(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


# Note [staggered regions]: the PS's update kernel streams up to eight vectors at once (the
# published weights and state, the gradient slot, the unpublished weights and state). Were each
# at the start of a page, every stream would touch the same offset within its page at the same
# time, and so the same memory channel: measured, Adam out of place on 10M weights took 12 ms
# with all vectors page aligned, 7.3 ms with each 256 bytes or more from the others, and 21 ms
# 64 bytes apart. So the vectors of a buffer, and the slots, start at distinct multiples of
# STAGGER past a page boundary (weights 0, state 1, 2, ..., slots from 4 on).
STAGGER = 256


def _stagger(k: int) -> int:
    """Bytes past the page boundary where the k-th vector of a buffer (0: the weights; from 4:
    the slots, cycling) starts."""
    return STAGGER * (k if k < 4 else 4 + (k - 4) % (PAGE // STAGGER - 4))


@dataclass(frozen=True)
class Layout:
    """What the arena holds; its digest guards every attach against a mismatched job."""
    params: tuple  # ((name, shape), ...) in model order, float32
    state: tuple   # ((name, dtype, shape), ...) optimizer state arrays
    rule: str
    hyper: tuple   # sorted ((key, value), ...)
    learners: int
    slots: int = 2

    def __post_init__(self):
        if self.learners < 1:
            raise ValueError(f"need at least one learner, not {self.learners}")
        if self.slots < 2:
            raise ValueError(f"need at least 2 slots per learner, not {self.slots}")

    @property
    def n(self) -> int:
        return sum(int(np.prod(s, dtype=np.int64)) for _, s in self.params)

    def named(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """A flat weight vector as name -> array views, in model order."""
        out, off = {}, 0
        for name, shape in self.params:
            k = int(np.prod(shape, dtype=np.int64))
            out[name] = flat[off:off + k].reshape(shape)
            off += k
        return out

    def flat(self, named: dict[str, np.ndarray]) -> np.ndarray:
        """name -> array (a checkpoint's weights) as one float32 vector, in model order."""
        return np.concatenate([np.asarray(named[name], np.float32).reshape(-1) for name, _ in self.params])

    def to_dict(self) -> dict:
        return {"params": [[k, list(s)] for k, s in self.params],
                "state": [[k, d, list(s)] for k, d, s in self.state],
                "rule": self.rule, "hyper": [list(kv) for kv in self.hyper],
                "learners": self.learners, "slots": self.slots}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(params=tuple((k, tuple(s)) for k, s in d["params"]),
                   state=tuple((k, dt, tuple(s)) for k, dt, s in d["state"]),
                   rule=d["rule"], hyper=tuple(tuple(kv) for kv in d["hyper"]),
                   learners=d["learners"], slots=d["slots"])

    def digest(self) -> bytes:
        return hashlib.sha256(msgpack.packb(self.to_dict())).digest()


@dataclass
class _Offsets:
    ctl: int
    buffer: int
    buffer_size: int
    weights: int            # within a buffer
    state: dict = field(default_factory=dict)   # name -> offset within a buffer
    slots: int = 0
    slot_size: int = 0
    total: int = 0


def _offsets(layout: Layout) -> _Offsets:
    words = GLOBAL_WORDS + layout.learners * LEARNER_WORDS + layout.learners * layout.slots * SLOT_WORDS
    ctl = 64 * 1024
    buf = ctl + _align(8 * words)
    off = _align(8 * L.words(layout.learners))    # the ledger: fixed size, whatever the job's length
    weights = off
    off = _align(off + 4 * layout.n)
    state = {}
    for k, (name, dtype, shape) in enumerate(layout.state, 1):
        state[name] = off + _stagger(k)            # Note [staggered regions]
        off = _align(state[name] + np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)))
    slots = buf + BUFFERS * off
    slot_size = _align(4 * layout.n) + PAGE       # room for the slot's stagger
    total = slots + layout.learners * layout.slots * slot_size
    return _Offsets(ctl, buf, off, weights, state, slots, slot_size, total)


class Arena:
    """A mapped arena. Create with `Arena.create` (the owner) or `Arena.attach` (everyone else).

    Views (`weights(b)`, `state(b)`, `slot(i, s)`) alias shared memory and live until `close()`.
    """

    def __init__(self, name: str, mm: mmap.mmap, layout: Layout, meta: dict, owner: bool):
        self.name, self.layout, self.meta, self.owner = name, layout, meta, owner
        self._lock = None
        self._mm = mm
        self._off = _offsets(layout)
        raw = np.frombuffer(mm, np.uint8)
        self._raw = raw
        words = GLOBAL_WORDS + layout.learners * (LEARNER_WORDS + layout.slots * SLOT_WORDS)
        self.words = raw[self._off.ctl:self._off.ctl + 8 * words].view(np.uint64)
        self.ctl = AtomicWords(self.words)
        self.job = JobWords(self.ctl, 0)
        self._learners = [LearnerWords(self.ctl, self.lw(i, 0)) for i in range(layout.learners)]
        self._headers = [[SlotHeader(self.ctl, self.sw(i, s, 0)) for s in range(layout.slots)]
                         for i in range(layout.learners)]
        n = layout.n
        self._ledgers = [self._region(self._buf(b), np.int64, (L.words(layout.learners),))
                         for b in range(BUFFERS)]
        self._weights = [self._region(self._buf(b) + self._off.weights, np.float32, (n,))
                         for b in range(BUFFERS)]
        self._state = [{k: self._region(self._buf(b) + self._off.state[k], np.dtype(dt), tuple(s))
                        for k, dt, s in layout.state} for b in range(BUFFERS)]
        self._slots = [[self._region(self._off.slots + (i * layout.slots + s) * self._off.slot_size
                                     + _stagger(4 + i * layout.slots + s),
                                     np.float32, (n,)) for s in range(layout.slots)]
                       for i in range(layout.learners)]

    # ---- creation and attachment -------------------------------------------------------
    @classmethod
    def create(cls, job: str, layout: Layout, meta: dict) -> "Arena":
        name = shm.segment_name(job)
        size = _offsets(layout).total
        blob = msgpack.packb({"job": job, "layout": layout.to_dict(), **meta})
        if len(blob) > META_MAX:
            raise ValueError(f"job configuration too large for the arena header ({len(blob)} bytes)")
        mm, lock = shm.create(name, size)
        try:
            mm[0:64] = MAGIC + struct.pack("<II", FORMAT, len(blob)) + layout.digest() + bytes(16)
            mm[64:64 + len(blob)] = blob
            arena = cls(name, mm, layout, msgpack.unpackb(blob), owner=True)
            arena._lock = lock              # held until close(): the owner is alive (shm.owned)
            pid, started = proc.me()        # the owner until someone says otherwise
            arena.job.owner_pid, arena.job.owner_start = pid, started
        except BaseException:
            os.close(lock)
            shm.unlink(name)
            raise
        return arena

    @classmethod
    def attach(cls, name: str, digest: bytes | None = None) -> "Arena":
        mm = shm.attach(name)
        try:
            layout, meta = cls._read_header(name, mm, digest)
        except BaseException:
            mm.close()
            raise
        return cls(name, mm, layout, meta, owner=False)

    @staticmethod
    def _read_header(name: str, mm: mmap.mmap, digest: bytes | None) -> tuple[Layout, dict]:
        """Check a mapped segment's header; its layout and meta, or a ValueError saying why not."""
        if len(mm) < 64:
            raise ValueError(f"{name} is not a gadei arena (only {len(mm)} bytes)")
        magic, fmt, meta_len, got = mm[0:8], *struct.unpack("<II", mm[8:16]), mm[16:48]
        if magic != MAGIC:
            raise ValueError(f"{name} is not a gadei arena (bad magic {magic!r})")
        if fmt != FORMAT:
            raise ValueError(f"{name} has arena format {fmt}, this gadei reads format {FORMAT}: "
                             "finish or clean the job with the gadei version that started it")
        try:
            if meta_len > META_MAX:
                raise ValueError(f"meta length {meta_len}")
            meta = msgpack.unpackb(mm[64:64 + meta_len], strict_map_key=False)
            layout = Layout.from_dict(meta["layout"])
        except Exception as e:
            raise ValueError(f"{name}: header corrupt (cannot read its layout: {type(e).__name__}: {e})") from None
        if layout.digest() != got:
            raise ValueError(f"{name}: header corrupt (layout digest does not match its layout)")
        if digest is not None and digest != got:
            raise ValueError(f"{name} holds a different layout (digest {got.hex()[:12]}, expected "
                             f"{digest.hex()[:12]}): model, optimizer or learner count differ "
                             "from the job that created it")
        if len(mm) < _offsets(layout).total:
            raise ValueError(f"{name}: header corrupt (its layout needs {_offsets(layout).total} bytes, "
                             f"the segment has {len(mm)})")
        return layout, meta

    def close(self) -> None:
        """Drop every view and unmap (the segment itself stays until the owner unlinks it)."""
        if self._mm is None:
            return
        self.ctl.release()
        self.job = self._learners = self._headers = None
        self.words = self._raw = self._weights = self._state = self._slots = self._ledgers = None
        self.ctl = None
        try:
            self._mm.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes when that view goes
        self._mm = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def unlink(self) -> None:
        shm.unlink(self.name)

    # ---- regions -----------------------------------------------------------------------
    def _buf(self, b: int) -> int:
        return self._off.buffer + b * self._off.buffer_size

    def _region(self, off: int, dtype, shape) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        return self._raw[off:off + np.dtype(dtype).itemsize * count].view(dtype).reshape(shape)

    def weights(self, b: int) -> np.ndarray:
        return self._weights[b]

    def state(self, b: int) -> dict[str, np.ndarray]:
        return self._state[b]

    def slot(self, i: int, s: int) -> np.ndarray:
        return self._slots[i][s]

    def read_ledger(self, b: int) -> L.Tally:
        """A copy of buffer b's ledger (the PS's part)."""
        return L.Tally(self.layout.learners, self._ledgers[b].copy())

    def write_ledger(self, b: int, ledger: L.Tally) -> None:
        np.copyto(self._ledgers[b], ledger.w)

    # ---- control words -----------------------------------------------------------------
    def learner(self, i: int) -> LearnerWords:
        return self._learners[i]

    def slot_header(self, i: int, s: int) -> SlotHeader:
        return self._headers[i][s]

    def slot_meta(self, i: int, s: int) -> np.ndarray:
        """Slot s of learner i's header words as a plain uint64 view, for its meta (S_VERSION ...
        S_SAMPLES) in one access instead of one atomic call per word: the learner writes them
        before its release store of the control word (READY), the PS reads them after its
        acquire load that saw READY, so plain accesses are ordered by those two."""
        at = self.sw(i, s, 0)
        return self.words[at:at + SLOT_WORDS]

    def lw(self, i: int, word: int) -> int:
        """Index of learner i's control word `word`."""
        return GLOBAL_WORDS + i * LEARNER_WORDS + word

    def sw(self, i: int, s: int, word: int) -> int:
        """Index of control word `word` of learner i's slot s."""
        return (GLOBAL_WORDS + self.layout.learners * LEARNER_WORDS
                + (i * self.layout.slots + s) * SLOT_WORDS + word)

    def published_ledger(self, timeout: float = 60.0) -> tuple[int, L.Tally]:
        """(version, ledger) of the published version, read consistently (as `pull` does)."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.job.published
            ledger = self.read_ledger(v % BUFFERS)
            if self.ctl.load(PUB, fence=True) <= v + 1:
                return v, ledger
            if time.monotonic() > deadline:
                raise TimeoutError(f"no consistent ledger of {self.name} within {timeout} s")

    # ---- consistent reads --------------------------------------------------------------
    def pull(self, out: np.ndarray, *, state: dict | None = None, timeout: float = 60.0) -> tuple[int, L.Tally | None]:
        """Copy the published weights (and optionally state and ledger) into `out`; return
        (version, ledger or None).

        Version v sits in buffer v % 3, which the PS rewrites only for version v + 3, and it
        starts that after publishing v + 2. So a copy is consistent if PUB <= v + 1 after it;
        otherwise it is retried (never handed out torn).
        """
        deadline = time.monotonic() + timeout
        while True:
            v = self.job.published
            b = v % BUFFERS
            np.copyto(out, self._weights[b])
            ledger = None
            if state is not None:
                for k, arr in self._state[b].items():
                    np.copyto(state[k], arr)
                ledger = self.read_ledger(b)   # torn: the version check below sends us round again
            if self.ctl.load(PUB, fence=True) <= v + 1:
                return v, ledger
            if time.monotonic() > deadline:
                raise TimeoutError(f"no consistent snapshot of {self.name} within {timeout} s: "
                                   "the PS publishes faster than this process can copy")
