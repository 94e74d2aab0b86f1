"""A tokenised parallel corpus held as two flat int32 tensors with offsets: millions of pairs fit in
memory without one Python list per sentence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .batching import Batch, collate


def pack(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Flat ids (N_tokens,) int32 and offsets (N + 1,) int64."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    offsets[1:] = lengths.cumsum(0)
    flat = torch.tensor([i for r in rows for i in r], dtype=torch.int32)
    return flat, offsets


@dataclass
class EncodedPairs:
    src: Tensor
    src_offsets: Tensor
    tgt: Tensor
    tgt_offsets: Tensor

    @classmethod
    def from_rows(cls, src_rows: list[list[int]], tgt_rows: list[list[int]]) -> EncodedPairs:
        return cls(*pack(src_rows), *pack(tgt_rows))

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def src_lengths(self) -> list[int]:
        return self.src_offsets.diff().tolist()

    def tgt_lengths(self) -> list[int]:
        return self.tgt_offsets.diff().tolist()

    def row(self, flat: Tensor, offsets: Tensor, i: int) -> list[int]:
        return flat[offsets[i] : offsets[i + 1]].tolist()

    def batch(self, indices: list[int]) -> Batch:
        src = [self.row(self.src, self.src_offsets, i) for i in indices]
        tgt = [self.row(self.tgt, self.tgt_offsets, i) for i in indices]
        return collate(src, tgt, indices)
