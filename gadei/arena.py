"""The arena: one shared-memory segment per job holding everything the PS and learners share.

Layout of the segment (byte offsets; every region page aligned)::

    0        header   magic, format version, meta length, layout digest (32 bytes)
    64       meta     msgpack: job id, layout, job configuration (read by every role)
    CTL      words    atomic uint64 control words: global, one block per learner, one per slot,
                      one mark per weight buffer
    HDR[h]   header buffer h of BUFFERS (3): ledger (fixed int64 words, gadei.ledger.Tally) |
             optimizer state, of version v in h = v % 3
    W[b]     weight buffer b of `layout.weight_buffers`: P float32
    SLOT     gradient slots: learners x slots x P float32

The word PUB holds the published version v; WMAP[v % 3] names the weight buffer that holds
it, and each weight buffer's mark says which version it holds (or REUSE). Learners that
compute on the published weights without a copy pin the buffer they read (a hazard pointer,
the learner's PIN word); the PS never writes into a pinned buffer. See docs/protocol.md.
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
FORMAT = 5   # 2: the owner holds a flock on the segment (shm.owned); 3: the ledger in fixed words;
             # 4: weight buffers apart from the headers, marks and pins (zero-copy pull);
             # 5: staggered regions (Note [staggered regions])
PAGE = mmap.PAGESIZE
META_MAX = 64 * 1024 - 64
BUFFERS = 3  # header buffers (ledger, optimizer state): version v's in v % 3 (see pull())

# global control words
PUB, PS_INCARNATION, PS_PID, PS_START, PS_BEAT, STOP, OWNER_PID, OWNER_START, HOLD, PS_BUSY_NS, \
    PS_STOP, WMAP = range(12)   # STOP: learners stop; PS_STOP: the PS stops once nothing is READY
# WMAP, WMAP + 1, WMAP + 2: WMAP + v % 3 = the weight buffer of version v (written before PUB)
GLOBAL_WORDS = 16
# per-learner words (L_DATA_EPOCH: passes over the learner's data; *_NS: time spent, summed)
L_PID, L_START, L_BEAT, L_INCARNATION, L_NEXT_SEQ, L_STEP, L_DATA_EPOCH, L_LOSS, L_SAMPLES, L_DONE, \
    L_PULLED, L_PULL_NS, L_WAIT_NS, L_PUSH_NS, L_STEP_NS, L_PIN = range(16)
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

# a weight buffer's mark when it holds no version a reader may take: the PS is reusing it
REUSE = (1 << 64) - 1
NOPIN = 0       # a learner's PIN word: it computes on no buffer


def pin_word(version: int, buffer: int) -> int:
    """A learner's PIN word: the buffer it computes on (low 16 bits), the version above."""
    return ((version + 1) << 16) | buffer


def pin_buffer(word: int) -> int | None:
    """The weight buffer a PIN word names, or None."""
    return None if word == NOPIN else word & 0xFFFF


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
    pin = _Word(L_PIN)                      # pin_word(version, buffer) it computes on, or NOPIN
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
# 64 bytes apart. So the state vectors of a header buffer, the weight buffers and the slots
# start at distinct multiples of STAGGER past a page boundary (state 1, 2, ...; from 4 on, the
# weight buffers, then the slots, cycling through the rest of the page).
STAGGER = 256


def _stagger(k: int) -> int:
    """Bytes past the page boundary where the k-th vector starts (1-3: a header buffer's state;
    from 4: the weight buffers, then the slots, cycling)."""
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
    weight_buffers: int = BUFFERS

    def __post_init__(self):
        if self.learners < 1:
            raise ValueError(f"need at least one learner, not {self.learners}")
        if self.slots < 2:
            raise ValueError(f"need at least 2 slots per learner, not {self.slots}")
        if not BUFFERS <= self.weight_buffers < 1 << 16:
            raise ValueError(f"need 3 to 65535 weight buffers, not {self.weight_buffers}")

    @property
    def zero_copy(self) -> bool:
        """Enough weight buffers for every learner to pin one (N + 2: the published one and
        one for the PS to write are never all pinned)."""
        return self.weight_buffers >= self.learners + 2

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
                "learners": self.learners, "slots": self.slots, "weight_buffers": self.weight_buffers}

    @classmethod
    def from_dict(cls, d: dict) -> "Layout":
        return cls(params=tuple((k, tuple(s)) for k, s in d["params"]),
                   state=tuple((k, dt, tuple(s)) for k, dt, s in d["state"]),
                   rule=d["rule"], hyper=tuple(tuple(kv) for kv in d["hyper"]),
                   learners=d["learners"], slots=d["slots"], weight_buffers=d["weight_buffers"])

    def digest(self) -> bytes:
        return hashlib.sha256(msgpack.packb(self.to_dict())).digest()


@dataclass
class _Offsets:
    ctl: int
    buffer: int             # the header buffers
    buffer_size: int
    weights: int            # the weight buffers
    weights_size: int
    state: dict = field(default_factory=dict)   # name -> offset within a header buffer
    slots: int = 0
    slot_size: int = 0
    total: int = 0


def _words(layout: Layout) -> int:
    return (GLOBAL_WORDS + layout.learners * (LEARNER_WORDS + layout.slots * SLOT_WORDS)
            + layout.weight_buffers)


def _offsets(layout: Layout) -> _Offsets:
    ctl = 64 * 1024
    buf = ctl + _align(8 * _words(layout))
    off = _align(8 * L.words(layout.learners))    # the ledger: fixed size, whatever the job's length
    state = {}
    for k, (name, dtype, shape) in enumerate(layout.state, 1):
        state[name] = off + _stagger(k)            # Note [staggered regions]
        off = _align(state[name] + np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)))
    weights = buf + BUFFERS * off
    weights_size = _align(4 * layout.n) + PAGE    # room for the buffer's stagger
    slots = weights + layout.weight_buffers * weights_size
    slot_size = _align(4 * layout.n) + PAGE       # room for the slot's stagger
    total = slots + layout.learners * layout.slots * slot_size
    return _Offsets(ctl, buf, off, weights, weights_size, state, slots, slot_size, total)


class Arena:
    """A mapped arena. Create with `Arena.create` (the owner) or `Arena.attach` (everyone else).

    Views (`weights(b)`, `state(b)`, `slot(i, s)`) alias shared memory and live until `close()`.
    """

    def __init__(self, name: str, mm: mmap.mmap, layout: Layout, meta: dict, owner: bool):
        self.name, self.layout, self.meta, self.owner = name, layout, meta, owner
        self._lock = None
        self._mm = mm
        self._ro = None         # a read-only mapping, for the weights a learner computes on
        self._off = _offsets(layout)
        raw = np.frombuffer(mm, np.uint8)
        self._raw = raw
        words = _words(layout)
        self.words = raw[self._off.ctl:self._off.ctl + 8 * words].view(np.uint64)
        self._mark0 = words - layout.weight_buffers     # index of weight buffer 0's mark
        self.ctl = AtomicWords(self.words)
        self.job = JobWords(self.ctl, 0)
        self._learners = [LearnerWords(self.ctl, self.lw(i, 0)) for i in range(layout.learners)]
        self._headers = [[SlotHeader(self.ctl, self.sw(i, s, 0)) for s in range(layout.slots)]
                         for i in range(layout.learners)]
        n = layout.n
        self._ledgers = [self._region(self._buf(b), np.int64, (L.words(layout.learners),))
                         for b in range(BUFFERS)]
        self._weights = [self._region(self._wbuf(b), np.float32, (n,))
                         for b in range(layout.weight_buffers)]
        self._ro_weights: list | None = None
        self._state = [{k: self._region(self._buf(b) + self._off.state[k], np.dtype(dt), tuple(s))
                        for k, dt, s in layout.state} for b in range(BUFFERS)]
        self._slots = [[self._region(self._off.slots + (i * layout.slots + s) * self._off.slot_size
                                     + _stagger(4 + layout.weight_buffers + i * layout.slots + s),
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
            arena.start_at(0)               # version 0 in weight buffer 0 (PUB = 0)
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
        self._ro_weights = None
        self.ctl = None
        for mm in (self._mm, self._ro):
            try:
                if mm is not None:
                    mm.close()
            except BufferError:
                pass  # a caller still holds a view; the mapping goes when that view goes
        self._mm = self._ro = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def unlink(self) -> None:
        shm.unlink(self.name)

    # ---- regions -----------------------------------------------------------------------
    def _buf(self, b: int) -> int:
        return self._off.buffer + b * self._off.buffer_size

    def _wbuf(self, b: int) -> int:
        return self._off.weights + b * self._off.weights_size + _stagger(4 + b)

    def _region(self, off: int, dtype, shape, raw=None) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        raw = self._raw if raw is None else raw
        return raw[off:off + np.dtype(dtype).itemsize * count].view(dtype).reshape(shape)

    def weights(self, b: int) -> np.ndarray:
        """Weight buffer b (0 <= b < layout.weight_buffers), writable: the PS's view."""
        return self._weights[b]

    def readonly_weights(self, b: int) -> np.ndarray:
        """Weight buffer b through a read-only mapping of the segment: what a learner computes
        on in place. A write through it is a SIGSEGV, not a silent change of the PS's weights."""
        if self._ro_weights is None:
            self._ro = shm.attach(self.name, readonly=True)
            raw = np.frombuffer(self._ro, np.uint8)
            self._ro_weights = [self._region(self._wbuf(i), np.float32, (self.layout.n,), raw)
                                for i in range(self.layout.weight_buffers)]
        return self._ro_weights[b]

    def published_weights(self) -> np.ndarray:
        """The published version's weight buffer (the PS's view; for the owner and tests, when
        the PS is not running: a live PS may reuse it once it publishes again)."""
        return self._weights[self.buffer_of(self.job.published)]

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

    def start_at(self, version: int) -> None:
        """Before any PS or learner runs: weight buffer 0 holds `version`, the others nothing."""
        for b in range(self.layout.weight_buffers):
            self.set_mark(b, version if b == 0 else REUSE)
        self.set_buffer_of(version, 0)

    def mark(self, b: int, fence: bool = False) -> int:
        """Weight buffer b's mark: the version it holds, or REUSE."""
        return self.ctl.load(self._mark0 + b, fence)

    def set_mark(self, b: int, value: int, fence: bool = False) -> None:
        self.ctl.store(self._mark0 + b, value, fence)

    def buffer_of(self, version: int) -> int:
        """WMAP[version % 3]: the weight buffer of `version`, if it is still one of the last three
        (check its mark)."""
        return self.ctl.load(WMAP + version % BUFFERS)

    def set_buffer_of(self, version: int, b: int) -> None:
        self.ctl.store(WMAP + version % BUFFERS, b)

    def pins(self) -> list[int | None]:
        """The weight buffer each learner has pinned (None: none); seq_cst loads (the PS's scan
        after its mark, docs/protocol.md "Zero-copy pull")."""
        return [pin_buffer(self.ctl.load(self.lw(i, L_PIN), fence=True)) for i in range(self.layout.learners)]

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

        Version v's weights sit in buffer b = WMAP[v % 3] while b's mark says v: the PS marks a
        buffer REUSE before it writes into it, so the copy is whole if the mark still says v
        after it. The state and ledger of v sit in header v % 3, which the PS rewrites only for
        version v + 3, after publishing v + 2: whole if PUB <= v + 1 after the copy. Otherwise
        the copy is retried (never handed out torn).
        """
        deadline = time.monotonic() + timeout
        while True:
            v = self.job.published
            b = self.buffer_of(v)
            if self.mark(b) == v:
                np.copyto(out, self._weights[b])
                ledger = None
                if state is not None:
                    h = v % BUFFERS
                    for k, arr in self._state[h].items():
                        np.copyto(state[k], arr)
                    ledger = self.read_ledger(h)   # torn: the version check below sends us round again
                if self.mark(b, fence=True) == v and self.ctl.load(PUB, fence=True) <= v + 1:
                    return v, ledger
            if time.monotonic() > deadline:
                raise TimeoutError(f"no consistent snapshot of {self.name} within {timeout} s: "
                                   "the PS publishes faster than this process can copy")

    def pin(self, i: int, timeout: float = 60.0) -> tuple[int, int]:
        """Learner i's zero-copy pull: pin the published weight buffer; (version, buffer).

        The hazard-pointer handshake (docs/protocol.md, "Zero-copy pull"): load PUB and its
        buffer b, store PIN = (v, b) (seq_cst; it replaces the learner's previous pin), then
        load b's mark (seq_cst): if it still says v, the PS has not begun to reuse b, and from
        now on its scan sees the pin and leaves b alone until the next pin replaces it.
        Otherwise (the PS published again meanwhile) retry."""
        deadline = time.monotonic() + timeout
        at = self.lw(i, L_PIN)
        while True:
            v = self.job.published
            b = self.buffer_of(v)
            self.ctl.store(at, pin_word(v, b), fence=True)
            if self.mark(b, fence=True) == v:
                return v, b
            if time.monotonic() > deadline:
                raise TimeoutError(f"learner {i} could not pin a published version of {self.name} "
                                   f"within {timeout} s")

    def unpin(self, i: int) -> None:
        """Clear learner i's pin (the supervisor, after reaping it; or the learner itself)."""
        self.ctl.store(self.lw(i, L_PIN), NOPIN, fence=True)
