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

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .checkpoint import atomic_write
from .errors import UserError
from .data.encoded import EncodedPairs
from .tokenizer import BOS, EOS, PAD

SHORTLIST_NAME = "shortlist.safetensors"


@dataclass(frozen=True)
class Shortlist:
    """translations: (Vs, per_source) target ids per source id; frequent: (M,) target ids; tokenizers: the
    fingerprints (seq2seq.tokenizer.Tokenizer.fingerprint) of the source and target SentencePiece models
    whose ids these are, when known: a shortlist is meaningless under other models of the same size."""

    translations: Tensor
    frequent: Tensor
    tokenizers: tuple[str, str] | None = None

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
        metadata = dict(metadata or {})
        if self.tokenizers is not None:
            metadata["tokenizers"] = ",".join(self.tokenizers)
        atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata or None))

    @classmethod
    def load(cls, path: str | Path, src_vocab_size: int, tgt_vocab_size: int,
             tokenizers: tuple[str, str] | None = None) -> Shortlist:
        """Read a shortlist and check it against the model's vocabulary sizes and, where both are known, the
        fingerprints of its SentencePiece models (`tokenizers`)."""
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), "pt") as handle:
                stored = (handle.metadata() or {}).get("tokenizers")
            stored = tuple(stored.split(",")) if stored else None
            shortlist = cls(tensors["translations"].long(), tensors["frequent"].long(), stored)
        except (SafetensorError, KeyError, OSError) as error:
            raise UserError(f"{path}: not a readable shortlist ({error})") from None
        if shortlist.translations.shape[0] != src_vocab_size or int(shortlist.translations.max()) >= tgt_vocab_size:
            raise UserError(f"{path}: this shortlist was built for other vocabularies than the model's")
        if tokenizers is not None and stored is not None and tuple(tokenizers) != stored:
            raise UserError(f"{path}: this shortlist was built for other SentencePiece models than the model's "
                            f"(fingerprints {','.join(stored)}, the model's {','.join(tokenizers)})")
        return shortlist


def occurrences(pairs: EncodedPairs, null: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (source word, target word) pairing that IBM Model 1 sums over, target word by target word.

    For target token j of pair p, the block of its pairings is NULL followed by p's source tokens. Returns
    e (N,) and f (N,) int64 ids, and block (M + 1,) int64 boundaries, one block per target token."""
    src_len, tgt_len = np.diff(pairs.src_offsets), np.diff(pairs.tgt_offsets)  # (P,)
    width = np.repeat(src_len + 1, tgt_len)  # (M,) pairings of each target token: NULL + the source
    block = np.zeros(len(width) + 1, dtype=np.int64)
    np.cumsum(width, out=block[1:])
    within = np.arange(int(block[-1])) - np.repeat(block[:-1], width)  # (N,) 0 = NULL, i = source word i
    first = np.repeat(np.repeat(pairs.src_offsets[:-1] - pairs.src_offsets[0], tgt_len), width)  # (N,)
    src_ids = np.asarray(pairs.src[pairs.src_offsets[0] : pairs.src_offsets[-1]], dtype=np.int64)
    tgt_ids = np.asarray(pairs.tgt[pairs.tgt_offsets[0] : pairs.tgt_offsets[-1]], dtype=np.int64)
    source = np.append(src_ids, null)  # a real word for every index below
    e = np.where(within == 0, null, source[np.minimum(first + within - 1, len(source) - 1)])
    f = np.repeat(tgt_ids, width)
    return e, f, block


def local_entries(pairs: EncodedPairs, src_vocab_size: int, tgt_vocab_size: int):
    """A chunk's distinct (e, f) keys (K,) sorted, the index into them of each pairing (N,) int32, and the
    block boundaries. One sort of key << 26 | position finds both (numpy sorts int64 far faster than it
    argsorts or hashes them)."""
    e, f, block = occurrences(pairs, src_vocab_size)
    if len(e) >= 1 << 26 or (src_vocab_size + 1) * tgt_vocab_size >= 1 << 37:
        raise ValueError("a chunk of IBM Model 1 pairings is too large: use a smaller chunk")
    packed = (e * tgt_vocab_size + f) << 26 | np.arange(len(e))
    packed.sort()
    key, position = packed >> 26, packed & ((1 << 26) - 1)
    new = np.empty(len(key), dtype=bool)
    new[:1], new[1:] = True, key[1:] != key[:-1]
    rank = np.empty(len(key), dtype=np.int32)
    rank[position] = np.cumsum(new) - 1
    return key[new], rank, block


def sorted_unique(values: np.ndarray) -> np.ndarray:
    values = np.sort(values)
    return values[np.append(True, values[1:] != values[:-1])]


def ibm_model1(pairs: EncodedPairs, src_vocab_size: int, tgt_vocab_size: int, iterations: int = 5,
               chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IBM Model 1 translation probabilities t(f | e) by EM (Brown et al. 1993), with a NULL source word
    (id src_vocab_size), over the word pairs that co-occur in some sentence pair: a sparse table, so a
    32k x 32k vocabulary costs memory in proportion to the sample, not to Vs * Vt. Pairings are built
    `chunk` pairs at a time and kept as an int32 index into the table (4 bytes each).

    Returns (e, f, t): the table's entries sorted by e then f; each e's t sums to 1."""
    local, keys = [], np.empty(0, dtype=np.int64)
    for start in range(0, len(pairs), chunk):
        local.append(local_entries(pairs.slice(start, start + chunk), src_vocab_size, tgt_vocab_size))
        if len(local) % 16 == 0 or start + chunk >= len(pairs):  # merge the chunks' keys as they come: bounded memory
            keys = sorted_unique(np.concatenate([keys, *(found for found, _, _ in local[-16:])]))
    entries = []  # per chunk: (the table entry of each pairing, block boundaries)
    for i, (found, rank, block) in enumerate(local):
        entries.append((np.searchsorted(keys, found).astype(np.int32)[rank], block))
        local[i] = None
    entry_e, entry_f = keys // tgt_vocab_size, keys % tgt_vocab_size
    t = np.full(len(keys), 1.0 / tgt_vocab_size)
    for _ in range(iterations):
        counts = np.zeros(len(keys))
        for entry, block in entries:
            share = t[entry]  # (N,) t(f_j | e_i) of each pairing
            share /= np.repeat(np.add.reduceat(share, block[:-1]), np.diff(block))  # E-step: over i for each j
            counts += np.bincount(entry, weights=share, minlength=len(keys))
        totals = np.bincount(entry_e, weights=counts, minlength=src_vocab_size + 1)  # M-step
        t = counts / np.maximum(totals[entry_e], 1e-300)
    return entry_e, entry_f, t


def build_shortlist(sample: EncodedPairs, src_vocab_size: int, tgt_vocab_size: int, per_source: int = 5,
                    frequent: int = 300, iterations: int = 5, target_counts: np.ndarray | None = None) -> Shortlist:
    """A shortlist from aligned training pairs (no <s> / </s>): per source id its per_source most probable
    target ids under IBM Model 1 on `sample`, plus the `frequent` most frequent target ids (counted by
    target_counts (Vt,) when given, else in the sample). Source ids never seen, and <pad> / <s> / </s>, add
    only </s>; a word seen with fewer than per_source targets fills its row with </s>."""
    e, f, t = ibm_model1(sample, src_vocab_size, tgt_vocab_size, iterations)
    keep = (e < src_vocab_size) & (f != PAD) & (f != BOS) & ~np.isin(e, [PAD, BOS, EOS])
    e, f, t = e[keep], f[keep], t[keep]
    order = np.lexsort((-t, e))  # by source id, most probable first (ties: smaller target id)
    e, f = e[order], f[order]
    rank = np.arange(len(e)) - np.searchsorted(e, e)  # position within its source id's list
    top = rank < per_source
    translations = np.full((src_vocab_size, per_source), EOS, dtype=np.int64)
    translations[e[top], rank[top]] = f[top]
    counts = target_counts if target_counts is not None else np.bincount(np.asarray(sample.tgt, dtype=np.int64),
                                                                          minlength=tgt_vocab_size)
    counts = torch.from_numpy(np.asarray(counts, dtype=np.float64)).clone()
    counts[[PAD, BOS]] = -1.0
    return Shortlist(torch.from_numpy(translations), counts.topk(min(frequent, tgt_vocab_size)).indices)


def load_shortlist(directory: str | Path, src_vocab_size: int, tgt_vocab_size: int,
                   tokenizers: tuple[str, str] | None = None) -> Shortlist | None:
    """DIR/shortlist.safetensors, or None when the model directory has none; checked as Shortlist.load does."""
    path = Path(directory) / SHORTLIST_NAME
    return Shortlist.load(path, src_vocab_size, tgt_vocab_size, tokenizers) if path.is_file() else None
