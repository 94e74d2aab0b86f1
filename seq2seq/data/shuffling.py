"""Python's `random.Random(seed).shuffle`, computed on numpy arrays of tens of millions of elements.

The toolkit's batch plans were first drawn with Python's `random` (a list of every example index, shuffled in
place). Plans are now made from length arrays without a Python object per example, and a seed must keep naming
the same batches, so a run started with an earlier version gives the same model. This module computes exactly
the permutation CPython's `random.shuffle(list(range(n)))` produces, in two vectorised halves:

1. The draws. `shuffle` walks i = n-1 .. 1 and takes j_i = randbelow(i + 1): the top k = (i + 1).bit_length()
   bits of the next 32-bit Mersenne Twister word, rejected and redrawn while >= i + 1. numpy's MT19937 loaded
   with `random.getstate()` yields the same words. Whether a word is accepted depends on how many were accepted
   before it (that fixes which i it is tested against), so words are taken in chunks of m: a word q places into
   a chunk is surely accepted when its value is <= the lowest bound it can meet (top - q), surely rejected above
   the highest (top); only the few in between (about m^2 / 2^(k+1)) are settled one by one, in order.
2. The swaps x[i] <-> x[j_i], in that order. Position s is written, before step s runs, only by steps t > s
   with j_t = s; so the value it holds then, W(s), is W(t) for the first such t to run (the smallest), or x[s]
   if none. Those chains point upwards and are followed by pointer doubling. After step i, x[i] holds what
   position j_i held just before step i: W(t) for the smallest t > i with j_t = j_i, or x[j_i] if none.
"""

from __future__ import annotations

import math
import random

import numpy as np


class PythonRandom:
    """The word stream of `random.Random(seed)`, shuffles drawn from it in the same order Python would."""

    def __init__(self, seed: int):
        _, state, _ = random.Random(seed).getstate()  # (version, 624 words + position, gauss)
        self.generator = np.random.MT19937()
        self.generator.state = {"bit_generator": "MT19937",
                                "state": {"key": np.array(state[:624], dtype=np.uint32), "pos": state[624]}}
        self.buffer = np.empty(0, dtype=np.uint32)

    def permutation(self, n: int) -> np.ndarray:
        """(n,) int32: the list `random.shuffle(list(range(n)))` leaves, drawing the same words."""
        return apply_swaps(self.draws(n))

    def draws(self, n: int) -> np.ndarray:
        """(n,) int32: j[i] = the randbelow(i + 1) that shuffle draws at step i (j[0] = 0, no step 0)."""
        j = np.zeros(n, dtype=np.int32)
        top = n - 1
        while top >= 1:
            k = (top + 1).bit_length()  # the same number of bits for every i + 1 in [2^(k-1), 2^k)
            bottom = max(1, (1 << (k - 1)) - 1)
            while top >= bottom:
                top = self.draw_block(j, top, bottom, k)
        return j

    def draw_block(self, j: np.ndarray, top: int, bottom: int, k: int) -> int:
        """Fill j[i] for i = top, top - 1, ... from one chunk of words; returns the next i still to draw."""
        m = min(4 * (top - bottom + 1) + 64, max(256, 8 * math.isqrt(1 << k)))  # about m^2/2^(k+1) unsure words
        r = (self.peek(m) >> np.uint32(32 - k)).astype(np.int64)  # (m,) candidate values
        q = np.arange(m)
        accepted = r <= top - q  # whatever came before word q, the bound it meets is at least top - q + 1
        unsure = np.flatnonzero(~accepted & (r <= top))
        if unsure.size:
            before = np.cumsum(accepted) - accepted  # surely accepted words before each one
            extra = 0
            for index in unsure.tolist():  # in order: each settles the bound of the next
                if r[index] <= top - before[index] - extra:
                    accepted[index], extra = True, extra + 1
        position = np.flatnonzero(accepted)[: top - bottom + 1]
        j[top - len(position) + 1 : top + 1] = r[position][::-1]  # the first accepted word is step top's
        self.advance(int(position[-1]) + 1 if len(position) == top - bottom + 1 else m)
        return top - len(position)

    def peek(self, m: int) -> np.ndarray:
        """The next m words, not yet consumed."""
        if len(self.buffer) < m:
            more = self.generator.random_raw(max(m - len(self.buffer), 1 << 16)).astype(np.uint32)
            self.buffer = np.concatenate([self.buffer, more])
        return self.buffer[:m]

    def advance(self, count: int) -> None:
        self.buffer = self.buffer[count:]


def apply_swaps(j: np.ndarray) -> np.ndarray:
    """(n,) int32: arange(n) after x[i], x[j[i]] = x[j[i]], x[i] for i = n-1 .. 1 (module docstring, part 2)."""
    n = len(j)
    if n < 2:
        return np.arange(n, dtype=np.int32)
    keys = np.sort(j[1:].astype(np.int64) * n + np.arange(1, n))  # (n-1,) unique: steps grouped by j, ascending
    by_target, target = (keys % n).astype(np.int32), (keys // n).astype(np.int32)  # int32 from here: n < 2^31
    del keys
    later = np.full(n, -1, dtype=np.int32)  # later[i]: the next step after i (smallest t > i) with j_t = j_i
    same = target[1:] == target[:-1]
    later[by_target[:-1][same]] = by_target[1:][same]
    first = np.full(n, -1, dtype=np.int32)  # first[s]: the smallest step t with j_t = s
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    first[target[starts]] = by_target[starts]
    writer = np.where(first == np.arange(n, dtype=np.int32), later, first)  # smallest t > s with j_t = s (0: none)
    held = root_of_chains(writer)  # W(s) = x[root]: the value at s before step s (s = 0: at the end)
    result = np.where(later >= 0, held[np.maximum(later, 0)], j).astype(np.int32, copy=False)
    result[0] = held[0]
    return result


def root_of_chains(parent: np.ndarray) -> np.ndarray:
    """(n,) for each s, the last index on the chain s -> parent[s] -> ... (parent -1 ends a chain), by doubling."""
    root = np.where(parent >= 0, parent, np.arange(len(parent), dtype=parent.dtype))
    while True:
        jumped = root[root]
        if np.array_equal(jumped, root):
            return root
        root = jumped
