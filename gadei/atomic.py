"""Atomic loads, stores and compare-and-swap on 64-bit words in shared memory.

Python has no memory-ordering primitives, and plain numpy stores are not ordered. We use the
`atomics` package (C11 atomics through libpatomic) for the operations themselves, and call its
function pointers directly: its high-level wrappers allocate a buffer object per call and cost
~14 us, the direct calls ~1.5 us.
"""
from __future__ import annotations

import numpy as np
import atomics
from atomics._impl.enums import MemoryOrder, OpType

_ACQUIRE, _RELEASE, _SEQ_CST = MemoryOrder.ACQUIRE.value, MemoryOrder.RELEASE.value, MemoryOrder.SEQ_CST.value


class AtomicWords:
    """Atomic access to a uint64 numpy array that views shared memory.

    Loads acquire, stores release (`fence=True` gives sequentially consistent ones where a
    store must not be reordered with a later load, e.g. a seqlock's second read). The array
    must stay alive (and mapped) while this object is used; `release()` drops the library view.
    """

    def __init__(self, words: np.ndarray):
        if words.dtype != np.uint64 or not words.flags.c_contiguous or words.ctypes.data % 8:
            raise ValueError("AtomicWords needs a C-contiguous, 8-byte aligned uint64 array")
        self.words = words
        self._base = words.ctypes.data
        # A short-lived atomic view, only to obtain the library's functions for 8-byte words;
        # they take addresses, so they outlive the view.
        with atomics.atomicview(buffer=memoryview(words[:1]).cast("B"), atype=atomics.UINT) as view:
            core = view._core
            self._load = core.get_op_func(OpType.LOAD)
            self._store = core.get_op_func(OpType.STORE)
            self._cas = core.get_op_func(OpType.CMPXCHG_STRONG)
        self._scratch = np.zeros(2, np.uint64)  # operands and results pass through memory
        self._s0 = self._scratch.ctypes.data
        self._s1 = self._s0 + 8

    def load(self, i: int, fence: bool = False) -> int:
        self._load(self._base + 8 * i, _SEQ_CST if fence else _ACQUIRE, self._s0)
        return int(self._scratch[0])

    def store(self, i: int, value: int, fence: bool = False) -> None:
        self._scratch[1] = value
        self._store(self._base + 8 * i, self._s1, _SEQ_CST if fence else _RELEASE)

    def cas(self, i: int, expected: int, desired: int) -> bool:
        """Set word i to `desired` if it holds `expected`; True if it did."""
        self._scratch[0] = expected
        self._scratch[1] = desired
        return bool(self._cas(self._base + 8 * i, self._s0, self._s1, _SEQ_CST, _SEQ_CST))

    def release(self) -> None:
        """Forget the array (so its memory can be unmapped); the object is unusable after."""
        self.words = None
        self._base = 0
