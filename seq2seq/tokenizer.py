"""SentencePiece subword tokenizers (Kudo & Richardson 2018), trained on a bounded sample of the data.

The paper used 160k / 80k word vocabularies; subwords give an open vocabulary with far fewer output
units, which is what makes the softmax affordable. Ids: 0 = <pad>, 1 = <unk>, 2 = <s>, 3 = </s>.
"""

from __future__ import annotations

import hashlib

import io
import random
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
import torch

from .checkpoint import atomic_write
from .errors import UserError

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    """A trained SentencePiece model: text <-> ids, with the special ids above."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such SentencePiece model")
        try:
            self.processor = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as error:
            raise UserError(f"{self.path}: not a SentencePiece model ({error})") from None
        if (self.processor.pad_id(), self.processor.bos_id(), self.processor.eos_id()) != (PAD, BOS, EOS):
            raise UserError(f"{self.path}: expected pad/bos/eos ids {PAD}/{BOS}/{EOS}; train it with train_sentencepiece")

    def __len__(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Ids of each text, without <s> or </s>; num_threads encoder threads (None: SentencePiece's default)."""
        return self.processor.encode(texts, num_threads=num_threads)

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Detokenised text of each id list; <pad>, <s> and </s> are dropped."""
        return self.processor.decode([[i for i in row if i > EOS or i == UNK] for row in ids])

    def fingerprint(self) -> str:
        """A short identity of the model file's content, stored with a translator to catch mismatches."""
        return file_fingerprint(self.path)


def file_fingerprint(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def train_sentencepiece(texts: Iterable[str], model_path: str | Path, vocab_size: int, model_type: str = "unigram",
                        sample_size: int = 1_000_000, seed: int = 0) -> Tokenizer:
    """Train a model on at most sample_size texts (a seeded uniform sample), write it to model_path.

    model_type is "unigram" or "bpe". Returns the loaded tokenizer.
    """
    texts = [t for t in texts if t.strip()]
    if len(texts) > sample_size:
        texts = random.Random(seed).sample(texts, sample_size)
    if not texts:
        raise UserError("no text to train a SentencePiece model on")
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, num_threads=2,
            hard_vocab_limit=False, minloglevel=2)  # the sample above is already bounded and seeded
    except RuntimeError as error:
        raise UserError(f"SentencePiece training for {model_path} failed: {str(error).splitlines()[0]}") from None
    atomic_write(model_path, lambda temporary: Path(temporary).write_bytes(buffer.getvalue()))
    return Tokenizer(model_path)


def load_or_train(model_path: str | Path, texts, vocab_size: int, model_type: str = "unigram",
                  sample_size: int = 1_000_000) -> Tokenizer:
    """Reuse model_path when it exists, else train it from texts (a list, or a callable returning one)."""
    if Path(model_path).is_file():
        return Tokenizer(model_path)
    return train_sentencepiece(texts() if callable(texts) else texts, model_path, vocab_size, model_type, sample_size)


def to_tensor(rows: list[list[int]], bos: bool = False, eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded time-major ids (T, B) and lengths (B,), optionally framed with <s> / </s>."""
    rows = [([BOS] if bos else []) + row + ([EOS] if eos else []) for row in rows]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((max(1, int(lengths.max())), len(rows)), PAD, dtype=torch.long)
    for b, row in enumerate(rows):
        out[: len(row), b] = torch.tensor(row, dtype=torch.long)
    return out, lengths
