"""A tokenised parallel corpus as flat token arrays with offsets, in memory or memory-mapped from .npy
files: millions of pairs cost a few bytes per token and no Python object per sentence, and N processes
that map the same files share one copy in the page cache."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..tokenizer import BOS, EOS, PAD
from .batching import Batch

SIDES = ("src", "tgt")


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every id: uint16 up to 65,536 pieces."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def pack(rows: list[list[int]], dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids (N_tokens,) and offsets (N + 1,) int64 of a list of id lists."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(offsets[-1]))
    return flat, offsets


def padded(flat: np.ndarray, offsets: np.ndarray, index: np.ndarray, prefix: int | None, suffix: int | None) -> np.ndarray:
    """Rows `index` of a flat array, framed by optional prefix/suffix ids, right-padded: (B, L) int64."""
    starts, lengths = offsets[index], offsets[index + 1] - offsets[index]  # (B,)
    shift = int(prefix is not None)
    width = max(1, int(lengths.max(initial=0)) + shift + int(suffix is not None))
    out = np.full((len(index), width), PAD, dtype=np.int64)  # (B, L)
    columns = np.arange(width - shift - int(suffix is not None))
    real = columns[None, :] < lengths[:, None]  # (B, L')
    out[:, shift : shift + len(columns)][real] = flat[(starts[:, None] + columns[None, :])[real]]
    if prefix is not None:
        out[:, 0] = prefix
    if suffix is not None:
        out[np.arange(len(index)), lengths + shift] = suffix
    return out


@dataclass
class EncodedPairs:
    """src/tgt: flat ids; *_offsets: (N + 1,) int64. Arrays may be numpy memmaps."""

    src: np.ndarray
    src_offsets: np.ndarray
    tgt: np.ndarray
    tgt_offsets: np.ndarray

    @classmethod
    def from_rows(cls, src_rows: list[list[int]], tgt_rows: list[list[int]]) -> EncodedPairs:
        return cls(*pack(src_rows), *pack(tgt_rows))

    @classmethod
    def open(cls, directory: str | Path) -> EncodedPairs:
        """Memory-map DIR/{src,tgt}.{tokens,offsets}.npy (written by ArrayWriter)."""
        directory = Path(directory)
        arrays = [np.load(directory / f"{side}.{kind}.npy", mmap_mode="r") for side in SIDES
                  for kind in ("tokens", "offsets")]
        return cls(*arrays)

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def src_lengths(self) -> np.ndarray:
        """(N,) int32 tokens per source sentence."""
        return np.diff(self.src_offsets).astype(np.int32)

    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets).astype(np.int32)

    def row(self, flat: np.ndarray, offsets: np.ndarray, i: int) -> list[int]:
        return flat[offsets[i] : offsets[i + 1]].tolist()

    def slice(self, start: int, stop: int) -> EncodedPairs:
        """Pairs start..stop-1 as views (offsets still count from the start of the flat arrays)."""
        stop = min(stop, len(self))
        return EncodedPairs(self.src, self.src_offsets[start : stop + 1], self.tgt, self.tgt_offsets[start : stop + 1])

    def select(self, index: np.ndarray) -> EncodedPairs:
        """The pairs `index` as an in-memory corpus (for samples)."""
        index = np.asarray(index, dtype=np.int64)
        return EncodedPairs(*_gather(self.src, self.src_offsets, index), *_gather(self.tgt, self.tgt_offsets, index))

    def batch(self, indices) -> Batch:
        """Pad one batch, time-major: sources end in </s>, targets are shifted by <s>/</s>."""
        index = np.asarray(indices, dtype=np.int64)
        src = padded(self.src, self.src_offsets, index, None, EOS)  # (B, S)
        tgt_in = padded(self.tgt, self.tgt_offsets, index, BOS, None)  # (B, T)
        tgt_out = padded(self.tgt, self.tgt_offsets, index, None, EOS)  # (B, T)
        lengths = self.src_offsets[index + 1] - self.src_offsets[index] + 1  # (B,)
        return Batch(torch.from_numpy(src.T.copy()), torch.from_numpy(lengths.astype(np.int64)),
                     torch.from_numpy(tgt_in.T.copy()), torch.from_numpy(tgt_out.T.copy()), torch.from_numpy(index))


def concatenate(parts: list[EncodedPairs]) -> EncodedPairs:
    """In-memory corpora one after the other (offsets of each counting from its own start)."""
    sides = []
    for side in SIDES:
        flats = [np.asarray(getattr(p, side)[getattr(p, f"{side}_offsets")[0] : getattr(p, f"{side}_offsets")[-1]])
                 for p in parts]
        lengths = np.concatenate([np.diff(getattr(p, f"{side}_offsets")) for p in parts] or [np.zeros(0, np.int64)])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        sides += [np.concatenate(flats) if flats else np.zeros(0, np.int32), offsets]
    return EncodedPairs(*sides)


def read_chunks(directory: str | Path, rows: int = 1 << 18) -> Iterator[tuple[int, EncodedPairs]]:
    """(first row, the next `rows` pairs in memory) over a corpus written by ArrayWriter, read with plain
    reads: a pass over every pair that does not leave the whole file mapped (and counted in the RSS)."""
    files = {f"{side}.{kind}": NpyRange(Path(directory) / f"{side}.{kind}.npy") for side in SIDES
             for kind in ("tokens", "offsets")}
    count = files["src.offsets"].length - 1
    for start in range(0, count, rows):
        stop = min(count, start + rows)
        arrays = []
        for side in SIDES:
            offsets = files[f"{side}.offsets"].read(start, stop + 1)
            arrays += [files[f"{side}.tokens"].read(int(offsets[0]), int(offsets[-1])), offsets - offsets[0]]
        yield start, EncodedPairs(*arrays)


class NpyRange:
    """Ranges of a 1-D .npy file by plain reads."""

    def __init__(self, path: Path):
        with path.open("rb") as handle:
            np.lib.format.read_magic(handle)
            (self.length,), _, self.dtype = np.lib.format.read_array_header_1_0(handle)
            self.start, self.path = handle.tell(), path

    def read(self, start: int, stop: int) -> np.ndarray:
        with self.path.open("rb") as handle:
            handle.seek(self.start + start * self.dtype.itemsize)
            return np.fromfile(handle, dtype=self.dtype, count=stop - start)


def _gather(flat: np.ndarray, offsets: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lengths = offsets[index + 1] - offsets[index]  # (K,)
    new_offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    within = np.arange(int(new_offsets[-1])) - np.repeat(new_offsets[:-1], lengths)  # position inside its row
    return np.asarray(flat[np.repeat(offsets[index], lengths) + within]), new_offsets


class ArrayWriter:
    """Append-only writer of one flat token array and its offsets as .npy files, in bounded memory.

    The token file gets a header sized for any length up front; close() writes the real one in place, so
    the data never has to be copied. Offsets are accumulated as lengths and written at close()."""

    HEADER = 128  # bytes: a version-1 .npy header for any 1-D shape up to 10^15 elements

    def __init__(self, tokens_path: Path, offsets_path: Path, dtype: np.dtype):
        self.tokens_path, self.offsets_path, self.dtype = Path(tokens_path), Path(offsets_path), np.dtype(dtype)
        self.handle = self.tokens_path.open("wb")
        self.handle.write(b"\0" * self.HEADER)
        self.count = 0
        self.lengths = self.offsets_path.with_suffix(".lengths.tmp").open("w+b")

    def append(self, rows: list[list[int]]) -> None:
        flat, offsets = pack(rows, self.dtype)
        flat.tofile(self.handle)
        np.diff(offsets).astype(np.int64).tofile(self.lengths)
        self.count += len(flat)

    def close(self) -> int:
        """Finish both files; returns the number of rows."""
        self.handle.seek(0)
        self.handle.write(_npy_header(self.dtype, self.count, self.HEADER))
        self.handle.close()
        self.lengths.flush()
        rows = self.lengths.tell() // 8
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int64)), "fortran_order": False, "shape": (rows + 1,)}
        with self.offsets_path.open("wb") as out:  # plain writes: no writable map of a file as large as the corpus
            np.lib.format.write_array_header_1_0(out, header)
            np.zeros(1, dtype=np.int64).tofile(out)
            total, chunk = 0, 1 << 22
            for start in range(0, rows, chunk):  # cumulative sum in bounded memory
                self.lengths.seek(start * 8)
                offsets = total + np.cumsum(np.fromfile(self.lengths, dtype=np.int64, count=min(chunk, rows - start)))
                offsets.tofile(out)
                total = int(offsets[-1])
        self.lengths.close()
        Path(self.lengths.name).unlink()
        return rows


def _npy_header(dtype: np.dtype, length: int, size: int) -> bytes:
    """A .npy version 1.0 header of exactly `size` bytes for a 1-D array of `length` elements."""
    header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)})
    header = header.encode("latin1")
    body = size - 10  # magic (6) + version (2) + header length (2)
    if len(header) + 1 > body:
        raise ValueError(f"{length} elements do not fit a {size}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + body.to_bytes(2, "little") + header + b" " * (body - len(header) - 1) + b"\n"
