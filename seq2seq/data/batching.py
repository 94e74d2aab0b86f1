"""Batches of parallel sentences: a token budget, length bucketing inside large shuffled pools, and a
seeded order per epoch, so that a run (or a resumed run) sees the same batches in the same order."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from ..tokenizer import BOS, EOS, to_tensor


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
        return Batch(*(t.to(device) for t in (self.src, self.src_lengths, self.tgt_in, self.tgt_out, self.index)))


def collate(src: list[list[int]], tgt: list[list[int]], index: list[int]) -> Batch:
    """Pad one batch: sources get </s>, targets are shifted by <s>/</s>."""
    src_ids, src_lengths = to_tensor(src, eos=True)
    tgt_in, _ = to_tensor([[BOS] + row for row in tgt])
    tgt_out, _ = to_tensor([row + [EOS] for row in tgt])
    return Batch(src_ids, src_lengths, tgt_in, tgt_out, torch.tensor(index, dtype=torch.long))


def token_batches(src_lengths: list[int], tgt_lengths: list[int], max_tokens: int, *, max_sentences: int | None = None,
                  seed: int = 0, epoch: int = 0, pool_batches: int = 100, shuffle: bool = True) -> list[list[int]]:
    """Group example indices into batches whose padded size (B x longest side) stays within max_tokens.

    Examples are shuffled (seeded by seed and epoch), cut into pools of about pool_batches batches,
    sorted by length within each pool so batches hold similar lengths, and the batches of all pools are
    shuffled again. shuffle=False keeps corpus order within length-sorted batches (for evaluation).
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(src_lengths)))
    if shuffle:
        rng.shuffle(order)
    size = [max(src_lengths[i], tgt_lengths[i]) + 1 for i in order]
    average = max(1, sum(size) // max(1, len(size)))
    pool = max(1, pool_batches * max_tokens // average)
    batches = []
    for start in range(0, len(order), pool):
        members = sorted(order[start : start + pool], key=lambda i: (tgt_lengths[i], src_lengths[i]))
        batches.extend(fill(members, [max(src_lengths[i], tgt_lengths[i]) + 1 for i in members], max_tokens, max_sentences))
    if shuffle:
        rng.shuffle(batches)
    return batches


def fill(members: list[int], sizes: list[int], max_tokens: int, max_sentences: int | None) -> list[list[int]]:
    """Cut length-sorted members into consecutive batches under the token and sentence budgets."""
    batches, current, longest = [], [], 0
    for index, size in zip(members, sizes):
        longest_if_added = max(longest, size)
        full = max_sentences is not None and len(current) >= max_sentences
        if current and (longest_if_added * (len(current) + 1) > max_tokens or full):
            batches.append(current)
            current, longest_if_added = [], size
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


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
