"""Word-level corpora in the Penn Treebank format (Mikolov's preprocessing, as used by Zaremba et al.).

One sentence per line, tokens separated by spaces; every line ends with an <eos> token. The vocabulary
is the most frequent words of the training file (PTB has exactly 10,000 types, <eos> included).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import atomic_write
from ..errors import UserError

EOS = "<eos>"
UNK = "<unk>"


def read_lines(path: str | Path) -> list[list[str]]:
    """Tokenised lines of a UTF-8 text file; a missing, empty or non-UTF-8 file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    lines = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                lines.append(raw.decode("utf-8").split())
            except UnicodeDecodeError as error:
                raise UserError(f"{path}, line {number}: invalid UTF-8 ({error.reason})") from None
    if not any(lines):
        raise UserError(f"{path}: the file holds no words")
    return lines


@dataclass(frozen=True)
class Vocabulary:
    """Words in id order; ids follow descending training frequency, ties broken alphabetically."""

    words: tuple[str, ...]

    @classmethod
    def build(cls, lines: list[list[str]], max_size: int = 10000) -> Vocabulary:
        counts = Counter(word for line in lines for word in line)
        counts[EOS] += len(lines)
        ranked = sorted(counts, key=lambda word: (-counts[word], word))
        if len(ranked) > max_size:
            ranked = [w for w in ranked if w != UNK][: max_size - 1] + [UNK]
        return cls(tuple(ranked))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, lines: list[list[str]]) -> Tensor:
        """One stream of ids (N,) with <eos> after every line; unknown words map to <unk>."""
        index = {word: i for i, word in enumerate(self.words)}
        unk = index.get(UNK)
        ids = []
        for line in lines:
            for word in line + [EOS]:
                i = index.get(word, unk)
                if i is None:
                    raise UserError(f"word {word!r} is not in the vocabulary, which has no {UNK}")
                ids.append(i)
        return torch.tensor(ids, dtype=torch.long)


def batchify(stream: Tensor, batch_size: int) -> Tensor:
    """Cut a stream (N,) into batch_size contiguous rows laid out as columns: (N // B, B).

    Column b continues from one window to the next, so the LSTM state can be carried across windows.
    """
    steps = len(stream) // batch_size
    if steps < 2:
        raise UserError(f"a stream of {len(stream)} tokens is too short for batch size {batch_size}")
    return stream[: steps * batch_size].view(batch_size, steps).t().contiguous()


def window_starts(steps: int, unroll: int) -> range:
    """Start rows of the unrolled windows over a (steps, B) batchified stream; the last may be short."""
    return range(0, steps - 1, unroll)


def window(data: Tensor, start: int, unroll: int) -> tuple[Tensor, Tensor]:
    """Inputs and next-word targets, each (t, B) with t = min(unroll, steps - 1 - start)."""
    length = min(unroll, len(data) - 1 - start)
    return data[start : start + length], data[start + 1 : start + 1 + length]


def write_toy_corpus(directory: str | Path, seed: int = 0, lines: tuple[int, int, int] = (300, 40, 40)) -> Path:
    """Write ptb.{train,valid,test}.txt that a small LSTM can learn in seconds: each sentence walks a
    fixed cycle of 24 words from a random start, so every word but the first is predictable."""
    import random

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(24)] + [UNK]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "valid", "test"), lines):
        rows = []
        for _ in range(count):
            start, length = rng.randrange(len(words)), rng.randint(4, 10)
            rows.append(" " + " ".join(words[(start + k) % len(words)] for k in range(length)) + " ")
        text = "\n".join(rows) + "\n"
        atomic_write(directory / f"ptb.{split}.txt", lambda temporary, text=text: Path(temporary).write_text(text, encoding="utf-8"))
    return directory
