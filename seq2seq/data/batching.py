"""Batches of parallel sentences: a token budget, length bucketing inside large shuffled pools, and a
seeded order per epoch, so that a run (or a resumed run) sees the same batches in the same order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..devices import to_device
from ..tokenizer import BOS, EOS, to_tensor
from .shuffling import PythonRandom


@dataclass
class Batch:
    """Right-padded, time-major ids. src: (S, B) ending in </s>; tgt_in: (T, B) = <s> y;
    tgt_out: (T, B) = y </s>; index: (B,) positions of these pairs in the corpus."""

    src: Tensor
    src_lengths: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    index: Tensor

    def to(self, device) -> Batch:
        """The batch on `device` (to CUDA through pinned memory, seq2seq.devices.to_device)."""
        return Batch(*(to_device(t, device) for t in (self.src, self.src_lengths, self.tgt_in, self.tgt_out, self.index)))


def collate(src: list[list[int]], tgt: list[list[int]], index: list[int]) -> Batch:
    """Pad one batch: sources get </s>, targets are shifted by <s>/</s>."""
    src_ids, src_lengths = to_tensor(src, eos=True)
    tgt_in, _ = to_tensor([[BOS] + row for row in tgt])
    tgt_out, _ = to_tensor([row + [EOS] for row in tgt])
    return Batch(src_ids, src_lengths, tgt_in, tgt_out, torch.tensor(index, dtype=torch.long))


def token_batches(src_lengths, tgt_lengths, max_tokens: int, *, max_sentences: int | None = None, seed: int = 0,
                  epoch: int = 0, pool_batches: int = 100, shuffle: bool = True) -> list[np.ndarray]:
    """Group example indices into batches whose padded size (B x (longest side + 1)) stays within max_tokens.

    Examples are shuffled (seeded by seed and epoch), cut into pools of about pool_batches batches,
    sorted by (target, source) length within each pool so batches hold similar lengths, and the batches of
    all pools are shuffled again. shuffle=False keeps corpus order within length-sorted batches (for
    evaluation). Works on the length arrays (any int arrays or lists) with numpy: no Python object per
    example, so a 40M-pair epoch is planned in seconds; the shuffles are Python's own (seq2seq.data.shuffling),
    so a seed gives the batches it gave when plans were Python lists. Returns int32 index arrays (views of one
    array).
    """
    src, tgt = np.asarray(src_lengths, dtype=np.int32), np.asarray(tgt_lengths, dtype=np.int32)  # 4 bytes a pair
    rng = PythonRandom(seed * 100_003 + epoch)  # the plan the list-based planner drew with random.Random
    order = rng.permutation(len(src)) if shuffle else np.arange(len(src), dtype=np.int32)
    size = np.maximum(src, tgt)[order] + 1  # padded tokens each example costs
    average = max(1, int(size.sum(dtype=np.int64)) // max(1, len(size)))
    pool = max(1, min(len(order), pool_batches * max_tokens // average))  # a pool larger than the corpus is the corpus
    within = np.lexsort((src[order], tgt[order], np.arange(len(order), dtype=np.int32) // pool))  # stable, like sorted()
    members, size = order[within], size[within]
    del within
    batches = np.split(members, fill(size, pool, max_tokens, max_sentences)[1:-1])
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def fill(size: np.ndarray, pool: int, max_tokens: int, max_sentences: int | None) -> np.ndarray:
    """Boundaries (K + 1,) that cut length-sorted examples into consecutive batches under the token and
    sentence budgets, never across a pool boundary: a batch of c examples fits while c times the largest
    size so far is <= max_tokens (non-decreasing in c, so one searchsorted per batch); a single example
    over the budget makes a batch of its own."""
    bounds, start, total = [0], 0, len(size)
    while start < total:
        limit = min(total, (start // pool + 1) * pool) - start
        limit = min(limit, max_sentences or limit, max(1, max_tokens // int(size[start])))
        window = size[start : start + limit]
        cost = np.maximum.accumulate(window) * np.arange(1, len(window) + 1)  # (c,) padded tokens with c examples
        start += max(1, int(np.searchsorted(cost, max_tokens, side="right")))
        bounds.append(start)
    return np.asarray(bounds)


def shard_evenly(batches: list[list[int]], num_processes: int, rank: int) -> list[list[int]]:
    """Process `rank`'s share of an epoch's batches, every example used exactly once: while the count
    does not divide by num_processes, the last batch is split in two halves (kept at the end, so the
    shares of the batches before it do not change). Every process gets ceil(len / num_processes)."""
    batches = list(batches)
    while len(batches) % num_processes:
        splittable = [i for i in range(len(batches)) if len(batches[i]) > 1]
        if not splittable:
            raise ValueError(f"{len(batches)} one-example batches cannot be shared by {num_processes} processes")
        big = batches.pop(splittable[-1])
        batches += [big[: len(big) // 2], big[len(big) // 2 :]]
    return batches[rank::num_processes]
