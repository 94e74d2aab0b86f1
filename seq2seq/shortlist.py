"""Lexical shortlists: decode over the target tokens a sentence's source words can translate to.

Each beam-search step of a translator spends most of its time on the output layer, H x V products for
every hypothesis. A shortlist (Jean et al. 2015, Sec. 3.2; Marian's `--shortlist`, CTranslate2's
vocabulary map) restricts the softmax of each sentence to the `frequent` most common target tokens plus,
for each of its source tokens, the `per_source` most probable translations under IBM Model 1 (Brown et
al. 1993) trained on the training pairs. It is an approximation: a token outside the list cannot be
produced, and probabilities are normalised over the list. Search results still do not depend on the
other sentences of a batch: each sentence is masked to its own list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .checkpoint import atomic_write
from .errors import UserError
from .tokenizer import BOS, EOS, PAD, to_tensor

SHORTLIST_NAME = "shortlist.safetensors"
MAX_TABLE_ENTRIES = 200_000_000  # 800 MB of float32 translation table


@dataclass(frozen=True)
class Shortlist:
    """translations: (Vs, per_source) target ids per source id; frequent: (M,) target ids."""

    translations: Tensor
    frequent: Tensor

    def candidates(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The target ids a batch may emit and which of them each sentence may emit.

        src: (S, B) right-padded source ids; src_lengths: (B,). Returns ids (U,), sorted, </s> first and
        never <pad> or <s>, and allowed (B, U) bool: </s>, the frequent tokens and the translations of the
        sentence's own source tokens."""
        valid = torch.arange(src.shape[0], device=src.device).unsqueeze(1) < src_lengths.unsqueeze(0)  # (S, B)
        per_sentence = self.translations.to(src.device)[src.t()]  # (B, S, N)
        per_sentence = per_sentence.masked_fill(~valid.t().unsqueeze(-1), EOS).flatten(1)  # (B, S * N)
        frequent = self.frequent.to(src.device).expand(src.shape[1], -1)  # (B, M)
        eos = torch.full((src.shape[1], 1), EOS, dtype=torch.long, device=src.device)
        per_sentence = torch.cat([eos, frequent, per_sentence], dim=1)  # (B, 1 + M + S * N)
        ids = torch.unique(per_sentence)  # sorted
        ids = torch.cat([ids.new_tensor([EOS]), ids[(ids != EOS) & (ids != PAD) & (ids != BOS)]])  # (U,)
        column = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long, device=src.device)
        column[ids] = torch.arange(len(ids), device=src.device)
        allowed = torch.zeros(src.shape[1], len(ids), dtype=torch.bool, device=src.device)  # (B, U)
        columns = column[per_sentence]  # (B, 1 + M + S * N), -1 for <pad> / <s>
        allowed.scatter_(1, columns.clamp(min=0), columns >= 0)
        allowed[:, 0] = True  # </s>
        return ids, allowed

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        tensors = {"translations": self.translations.contiguous(), "frequent": self.frequent.contiguous()}
        atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))

    @classmethod
    def load(cls, path: str | Path, src_vocab_size: int, tgt_vocab_size: int) -> Shortlist:
        """Read a shortlist and check it against the model's vocabulary sizes."""
        try:
            tensors = load_file(str(path))
            shortlist = cls(tensors["translations"].long(), tensors["frequent"].long())
        except (SafetensorError, KeyError, OSError) as error:
            raise UserError(f"{path}: not a readable shortlist ({error})") from None
        if shortlist.translations.shape[0] != src_vocab_size or int(shortlist.translations.max()) >= tgt_vocab_size:
            raise UserError(f"{path}: this shortlist was built for other vocabularies than the model's")
        return shortlist


def ibm_model1(src_rows: list[list[int]], tgt_rows: list[list[int]], src_vocab_size: int, tgt_vocab_size: int,
               iterations: int = 5, chunk: int = 2048) -> Tensor:
    """IBM Model 1 translation probabilities t(f | e) by EM, with a NULL source word (the last row).

    src_rows, tgt_rows: aligned id lists. Returns (Vs + 1, Vt); each row sums to 1 (or 0 for unseen words).
    Dense: meant for subword vocabularies (Vs * Vt up to MAX_TABLE_ENTRIES)."""
    if (src_vocab_size + 1) * tgt_vocab_size > MAX_TABLE_ENTRIES:
        raise ValueError(f"a dense {src_vocab_size} x {tgt_vocab_size} translation table is too large for a shortlist")
    null = src_vocab_size
    src, src_mask = _batch_major([[null, *row] for row in src_rows])  # (P, S)
    tgt, tgt_mask = _batch_major(tgt_rows)  # (P, T)
    table = torch.full((src_vocab_size + 1, tgt_vocab_size), 1.0 / tgt_vocab_size)
    for _ in range(iterations):
        counts = torch.zeros_like(table)
        for start in range(0, len(src_rows), chunk):
            e, f = src[start : start + chunk], tgt[start : start + chunk]
            # E-step: the posterior of aligning target position j to source position i
            p = table[e.unsqueeze(2), f.unsqueeze(1)] * src_mask[start : start + chunk].unsqueeze(2)  # (P, S, T)
            p = p / p.sum(1, keepdim=True).clamp(min=1e-30) * tgt_mask[start : start + chunk].unsqueeze(1)
            index = (e.unsqueeze(2).expand_as(p).reshape(-1), f.unsqueeze(1).expand_as(p).reshape(-1))
            counts.index_put_(index, p.reshape(-1), accumulate=True)
        table = counts / counts.sum(1, keepdim=True).clamp(min=1e-30)  # M-step
    return table


def build_shortlist(src_rows: list[list[int]], tgt_rows: list[list[int]], src_vocab_size: int, tgt_vocab_size: int,
                    per_source: int = 5, frequent: int = 300, iterations: int = 5) -> Shortlist:
    """A shortlist from aligned training rows (no <s> / </s>): per source id its per_source most
    probable target ids under IBM Model 1, plus the `frequent` most frequent target ids. Source ids never
    seen in training, and <pad> / <s> / </s>, add only </s>."""
    table = ibm_model1(src_rows, tgt_rows, src_vocab_size, tgt_vocab_size, iterations)[:src_vocab_size]  # (Vs, Vt)
    table[:, [PAD, BOS]] = -1.0
    translations = table.topk(min(per_source, tgt_vocab_size), dim=1).indices  # (Vs, N)
    unseen = table.amax(dim=1) <= 0.0
    unseen[[PAD, BOS, EOS]] = True
    translations[unseen] = EOS
    counts = torch.zeros(tgt_vocab_size).index_add_(0, torch.tensor([i for row in tgt_rows for i in row], dtype=torch.long),
                                                     torch.ones(sum(map(len, tgt_rows))))
    counts[[PAD, BOS]] = -1.0
    return Shortlist(translations, counts.topk(min(frequent, tgt_vocab_size)).indices)


def load_shortlist(directory: str | Path, src_vocab_size: int, tgt_vocab_size: int) -> Shortlist | None:
    """DIR/shortlist.safetensors, or None when the model directory has none."""
    path = Path(directory) / SHORTLIST_NAME
    return Shortlist.load(path, src_vocab_size, tgt_vocab_size) if path.is_file() else None


def _batch_major(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    """(P, L) ids (<pad>-padded) and a (P, L) float mask of real positions."""
    ids, lengths = to_tensor(rows)  # (L, P)
    mask = torch.arange(ids.shape[0]).unsqueeze(0) < lengths.unsqueeze(1)  # (P, L)
    return ids.t(), mask.float()
