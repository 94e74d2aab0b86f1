"""A prepared translation corpus: cleaned, SentencePiece-encoded and written once as memory-mapped arrays.

    DIR/manifest.json                      what it was made from and with (written last: its presence means complete)
    DIR/tokenizers/{SRC,TGT}.model         or joint.model
    DIR/{train,valid,test}/{src,tgt}.{tokens,offsets}.npy
    DIR/{valid,test}/references.json       the target text BLEU is scored against
    DIR/shortlist.safetensors              when the decoding settings ask for a lexical shortlist

The training split is streamed through in chunks (bounded memory at any corpus size): when the
SentencePiece models have to be trained, a first pass cleans the pairs into a spool file and keeps a
seeded uniform sample (reservoir sampling) to train them on; the second pass encodes each chunk with
SentencePiece on every core while the next chunk is read and cleaned in a thread, and appends the ids to
the arrays. It is built under DIR.partial and renamed into place, so an interrupted preparation leaves
nothing that is reused. A directory whose manifest records the same settings is reused as it is.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import queue
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import __version__
from ..checkpoint import write_json
from ..errors import UserError
from ..shortlist import SHORTLIST_NAME, Shortlist, build_shortlist
from ..tokenizer import Tokenizer, file_fingerprint, train_sentencepiece
from .encoded import SIDES, ArrayWriter, EncodedPairs, concatenate, read_chunks, token_dtype
from .parallel import (SKIP_HINT, CleaningReport, Pair, clean_pairs, decode_line, iter_parallel_text, load_hf_pairs,
                       open_text, resolve)

MANIFEST = "manifest.json"
FORMAT = 1
SPLITS = ("train", "valid", "test")
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
CHUNK = 50_000  # pairs encoded at a time


@dataclass
class PreparedCorpus:
    """The mapped arrays of each split, both tokenizers, the valid/test references and the shortlist."""

    directory: Path
    manifest: dict
    src_tok: Tokenizer
    tgt_tok: Tokenizer
    splits: dict[str, EncodedPairs]
    references: dict[str, list[str]]
    shortlist: Shortlist | None


def prepare(data, decoding, directory: str | Path, *, skip_invalid_utf8: bool = False, seed: int = 0,
            explicit: bool = False, log: Callable[[str], None] = print) -> PreparedCorpus:
    """Open DIR when its manifest matches these settings, else build it. A mismatch rebuilds the
    directory, or with explicit=True (a directory the user named) is refused in one line."""
    directory = Path(directory)
    wanted = settings(data, decoding, skip_invalid_utf8, seed)
    if (directory / MANIFEST).is_file():
        stored = read_manifest(directory)
        differ = sorted(k for k in set(wanted) | set(stored.get("settings", {}))
                        if stored.get("settings", {}).get(k) != wanted.get(k))
        changed = [] if differ else changed_tokenizers(directory, stored)
        if not differ and not changed:
            log(f"prepared corpus {directory}: reused ({stored['counts']['train']['pairs']:,} training pairs)")
            return open_prepared(directory)
        if changed:
            differ = [f"{', '.join(changed)} changed after preparation (fingerprints in {MANIFEST})"]
        if explicit:
            raise UserError(f"{directory} was prepared with other settings ({', '.join(differ)}); name another "
                            f"directory or delete this one")
        log(f"prepared corpus {directory}: made with other settings ({', '.join(differ)}), rebuilding it")
    build(data, decoding, directory, wanted, skip_invalid_utf8, seed, log)
    return open_prepared(directory)


def read_manifest(directory: Path) -> dict:
    try:
        return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{directory / MANIFEST}: unreadable ({error}); delete {directory} to prepare it again") from None


def changed_tokenizers(directory: Path, manifest: dict) -> list[str]:
    """The tokenizer files of a prepared corpus whose content no longer matches its manifest."""
    files, fingerprints = manifest["tokenizers"]["files"], manifest["tokenizers"]["fingerprints"]
    paths = [directory / "tokenizers" / name for name in files]
    return [f"tokenizers/{path.name}" for path, fingerprint in zip(paths, fingerprints)
            if not path.is_file() or file_fingerprint(path) != fingerprint]


def open_prepared(directory: str | Path) -> PreparedCorpus:
    """Map a prepared corpus (no copy of the arrays is made)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    src_tok, tgt_tok = (Tokenizer(directory / "tokenizers" / name) for name in manifest["tokenizers"]["files"])
    splits = {split: EncodedPairs.open(directory / split) for split in SPLITS}
    references = {split: json.loads((directory / split / "references.json").read_text(encoding="utf-8"))
                  for split in ("valid", "test")}
    shortlist = None
    if (directory / SHORTLIST_NAME).is_file():
        shortlist = Shortlist.load(directory / SHORTLIST_NAME, len(src_tok), len(tgt_tok),
                                   tuple(manifest["tokenizers"]["fingerprints"]))
    return PreparedCorpus(directory, manifest, src_tok, tgt_tok, splits, references, shortlist)


# --- What a prepared corpus depends on ---

def settings(data, decoding, skip_invalid_utf8: bool, seed: int) -> dict:
    """Everything that determines the prepared arrays; stored in the manifest and compared on reuse."""
    return json.loads(json.dumps({
        "format": FORMAT, "sources": {split: describe_source(data, split) for split in SPLITS},
        "src_lang": data.src_lang, "tgt_lang": data.tgt_lang, "max_train_pairs": data.max_train_pairs,
        "cleaning": {"max_words": data.max_words, "max_ratio": data.max_ratio, "skip_invalid_utf8": skip_invalid_utf8},
        "vocabulary": {"size": data.vocab_size, "model_type": data.spm_model_type, "joint": data.joint_vocabulary,
                       "sample": data.spm_sample, "seed": seed, "given": bundled_fingerprints(data)},
        "shortlist": {"per_source": decoding.shortlist_per_source, "frequent": decoding.shortlist_frequent,
                      "pairs": decoding.shortlist_pairs, "seed": seed},
    }))


def describe_source(data, split: str) -> dict:
    """Local files by path, size and modification time; hub datasets by id, config and data files."""
    prefix = getattr(data, f"{split}_prefix")
    if prefix:
        return {"files": [file_identity(resolve(prefix, lang)) for lang in (data.src_lang, data.tgt_lang)]}
    if not data.dataset:
        raise UserError(f"no {split} data: give --{split}-prefix or --dataset")
    files = split_files(data.data_files).get(HUB_SPLITS[split], [])
    return {"dataset": data.dataset, "config": data.dataset_config, "split": HUB_SPLITS[split],
            "data_files": [file_identity(Path(f)) if Path(f).is_file() else {"path": f} for f in files]}


def file_identity(path: Path) -> dict:
    status = path.stat()
    return {"path": str(path.resolve()), "size": status.st_size, "mtime": status.st_mtime_ns}


def split_files(data_files: Iterable[str]) -> dict[str, list[str]]:
    """--data-files entries SPLIT=PATH (split: train, validation, test) or PATH (train) as datasets wants them."""
    files: dict[str, list[str]] = {}
    for entry in data_files or ():
        split, _, path = entry.rpartition("=") if "=" in entry else ("train", "", entry)
        if split not in HUB_SPLITS.values():
            raise UserError(f"--data-files {entry}: the split must be train, validation or test")
        files.setdefault(split, []).append(path)
    return files


def bundled_fingerprints(data) -> list[str] | None:
    """Fingerprints of the preset's ready-made SentencePiece models, or None when they are trained here."""
    if not data.tokenizer_dir:
        return None
    return [Tokenizer(path).fingerprint() for path in tokenizer_paths(data, Path(data.tokenizer_dir))]


def tokenizer_paths(data, directory: Path) -> list[Path]:
    names = ["joint.model"] * 2 if data.joint_vocabulary else [f"{data.src_lang}.model", f"{data.tgt_lang}.model"]
    return [directory / name for name in names]


# --- Reading: cleaned pairs of a split, streamed ---

def read_pairs(data, split: str, skip_invalid_utf8: bool, report: CleaningReport) -> Iterator[Pair]:
    prefix = getattr(data, f"{split}_prefix")
    if prefix:
        return iter_parallel_text(prefix, data.src_lang, data.tgt_lang, skip_invalid_utf8, report)
    try:
        return load_hf_pairs(data.dataset, data.dataset_config, HUB_SPLITS[split], data.src_lang, data.tgt_lang,
                             data_files=split_files(data.data_files) or None)
    except UserError as error:
        raise UserError(f"{error}; without network access, run `--preset demo` (bundled Multi30k)") from None


def cleaned_training_pairs(data, skip_invalid_utf8: bool, report: CleaningReport) -> Iterator[Pair]:
    pairs = clean_pairs(read_pairs(data, "train", skip_invalid_utf8, report), data.max_words, data.max_ratio, report)
    return itertools.islice(pairs, data.max_train_pairs)


def chunks(pairs: Iterable[Pair], size: int = CHUNK) -> Iterator[list[Pair]]:
    iterator = iter(pairs)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def prefetched(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run an iterator in a thread, `depth` items ahead: the next chunk is read and cleaned (Python, under
    the GIL) while SentencePiece encodes this one (C++, outside it). Errors surface in the caller."""
    items: queue.Queue = queue.Queue(depth)
    done = object()

    def produce():
        try:
            for item in iterator:
                items.put(item)
        except BaseException as error:  # handed to the consumer
            items.put(error)
        items.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


class Reservoir:
    """A seeded uniform sample of at most `size` items of a stream of unknown length (Vitter's Algorithm R)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seen, self.items, self.rng = size, 0, [], random.Random(seed)

    def add(self, item) -> None:
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            slot = self.rng.randrange(self.seen + 1)
            if slot < self.size:
                self.items[slot] = item
        self.seen += 1


# --- Building ---

def build(data, decoding, directory: Path, wanted: dict, skip_invalid_utf8: bool, seed: int, log) -> None:
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted preparation starts again
    partial.mkdir(parents=True)
    started, timings, reports = time.time(), {}, {split: CleaningReport() for split in SPLITS}
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    log(f"preparing {directory} from {describe(wanted['sources']['train'])} with {threads} threads")
    train = cleaned_training_pairs(data, skip_invalid_utf8, reports["train"])
    spool, total = None, None
    if data.tokenizer_dir:
        tokenizers = copy_tokenizers(data, partial)
    else:
        clock = time.time()
        sampled = sample_by_line(data, skip_invalid_utf8, seed)
        if sampled is None:  # a stream (or the first max_train_pairs): one pass to a spool file and a reservoir
            spool, total, sample = spool_and_sample(train, partial / "spool", data.spm_sample, seed)
            train = read_spool(partial / "spool")
        else:
            total, sample = sampled
        timings["sentencepiece_sample_s"] = time.time() - clock
        if not sample:
            for _ in cleaned_training_pairs(data, skip_invalid_utf8, reports["train"]) if sampled else ():
                pass
            raise UserError(f"no training pairs are left after cleaning ({reports['train']})")
        clock = time.time()
        tokenizers = train_tokenizers(data, sample, partial, seed)
        timings["sentencepiece_training_s"] = time.time() - clock
        del sample
        release_memory()
    clock = time.time()
    counts = {"train": encode_split(train, tokenizers, partial / "train", threads, total, "encoding train")}
    timings["encode_s"] = time.time() - clock
    if spool is not None:
        for path in spool:
            path.unlink()
    if counts["train"]["pairs"] == 0:
        raise UserError(f"no training pairs are left after cleaning ({reports['train']})")
    for split in ("valid", "test"):
        pairs = list(read_pairs(data, split, skip_invalid_utf8, reports[split]))
        if not pairs:
            raise UserError(f"the {split} split is empty")
        counts[split] = encode_split(pairs, tokenizers, partial / split, threads, None, None)
        write_json(partial / split / "references.json", [target for _, target in pairs])
    if decoding.shortlist_per_source:
        release_memory()
        clock = time.time()
        make_shortlist(decoding, partial, tokenizers, seed)
        timings["shortlist_s"] = time.time() - clock
    timings["total_s"] = time.time() - started
    write_json(partial / MANIFEST, {
        "settings": wanted, "counts": counts, "cleaning": {s: asdict(r) for s, r in reports.items()},
        "tokenizers": {"files": [p.name for p in tokenizers_files(data)],
                       "fingerprints": [tok.fingerprint() for tok in tokenizers]},
        "timings": timings, "threads": threads, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seq2seq_version": __version__})
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    log(f"prepared {counts['train']['pairs']:,} training pairs ({reports['train']}) in {timings['total_s']:.1f} s")


def release_memory() -> None:
    """Hand freed heap pages back to the OS between stages (glibc keeps them otherwise), so that the peak
    RSS is the largest stage's, not the sum of all of them."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def describe(source: dict) -> str:
    if "files" in source:
        return " + ".join(f["path"] for f in source["files"])
    return f"{source['dataset']} ({source['config']}, {source['split']})"


def tokenizers_files(data) -> list[Path]:
    return tokenizer_paths(data, Path("tokenizers"))


def copy_tokenizers(data, partial: Path) -> tuple[Tokenizer, Tokenizer]:
    """The preset's ready-made models, copied so the prepared corpus carries the ones it was encoded with."""
    copies = []
    for source, name in zip(tokenizer_paths(data, Path(data.tokenizer_dir)), tokenizers_files(data)):
        target = partial / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copies.append(Tokenizer(target))
    return copies[0], copies[1]


def sample_by_line(data, skip_invalid_utf8: bool, seed: int) -> tuple[int, list[Pair]] | None:
    """Local files read whole: a seeded uniform sample of spm_sample line numbers, of which the cleaned
    pairs are kept (a uniform sample of the cleaned pairs), read without decoding the other lines.
    Returns (line count, sample), or None for a stream or a max_train_pairs cut (whose pairs are only
    known once cleaned)."""
    if not data.train_prefix:
        return None
    paths = [resolve(data.train_prefix, lang) for lang in (data.src_lang, data.tgt_lang)]
    lines = count_lines(paths[0])
    if data.max_train_pairs is not None and data.max_train_pairs < lines:
        return None
    rng = np.random.default_rng([seed, 0])
    chosen = np.sort(rng.choice(lines, data.spm_sample, replace=False)) if lines > data.spm_sample else np.arange(lines)
    picked, wanted = [], iter(chosen.tolist())
    with open_text(paths[0]) as src, open_text(paths[1]) as tgt:
        target = next(wanted, None)
        for number, (a, b) in enumerate(zip(src, tgt)):
            if number == target:
                picked.append(tuple(decode_line(raw, path, number + 1, skip_invalid_utf8, SKIP_HINT)
                                    for raw, path in ((a, paths[0]), (b, paths[1]))))
                target = next(wanted, None)
    sample = [(a, b) for a, b in picked if a is not None and b is not None]
    return lines, list(clean_pairs(sample, data.max_words, data.max_ratio))


def count_lines(path: Path) -> int:
    with open_text(path) as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 24), b""))


def spool_and_sample(pairs: Iterator[Pair], prefix: Path, sample_size: int, seed: int):
    """First pass: write the cleaned pairs to PREFIX.{src,tgt} and keep a seeded sample of them."""
    reservoir, paths = Reservoir(sample_size, seed), [prefix.with_suffix(f".{side}") for side in SIDES]
    with paths[0].open("w", encoding="utf-8") as src, paths[1].open("w", encoding="utf-8") as tgt, \
            tqdm(unit=" pairs", unit_scale=True, desc="reading and cleaning", mininterval=2.0) as bar:
        for chunk in prefetched(chunks(pairs)):
            src.write("".join(one_line(a) for a, _ in chunk))
            tgt.write("".join(one_line(b) for _, b in chunk))
            for pair in chunk:
                reservoir.add(pair)
            bar.update(len(chunk))
    return paths, reservoir.seen, reservoir.items


def one_line(text: str) -> str:
    return (text.replace("\n", " ") if "\n" in text else text) + "\n"


def read_spool(prefix: Path) -> Iterator[Pair]:
    with prefix.with_suffix(".src").open(encoding="utf-8", newline="\n") as src, \
            prefix.with_suffix(".tgt").open(encoding="utf-8", newline="\n") as tgt:
        for a, b in zip(src, tgt):
            yield a[:-1], b[:-1]


def train_tokenizers(data, sample: list[Pair], partial: Path, seed: int) -> tuple[Tokenizer, Tokenizer]:
    paths = [partial / name for name in tokenizers_files(data)]
    if data.joint_vocabulary:
        joint = train_sentencepiece([side for pair in sample for side in pair], paths[0], data.vocab_size,
                                    data.spm_model_type, 2 * data.spm_sample, seed)
        return joint, joint
    with ThreadPoolExecutor(2) as pool:  # SentencePiece training is partly single-threaded: both sides at once
        return tuple(pool.map(lambda i: train_sentencepiece([pair[i] for pair in sample], paths[i], data.vocab_size,
                                                            data.spm_model_type, data.spm_sample, seed), range(2)))


def encode_split(pairs: Iterable[Pair], tokenizers, directory: Path, threads: int, total: int | None,
                 desc: str | None) -> dict:
    """Encode pairs chunk by chunk on every core and append them to DIR's arrays; returns the counts."""
    directory.mkdir(parents=True, exist_ok=True)
    writers = [ArrayWriter(directory / f"{side}.tokens.npy", directory / f"{side}.offsets.npy", token_dtype(len(tok)))
               for side, tok in zip(SIDES, tokenizers)]
    with tqdm(total=total, unit=" pairs", unit_scale=True, desc=desc, disable=desc is None, mininterval=2.0) as bar:
        for chunk in prefetched(chunks(pairs)):
            for i, (writer, tok) in enumerate(zip(writers, tokenizers)):
                writer.append(tok.encode([pair[i] for pair in chunk], num_threads=threads))
            bar.update(len(chunk))
    rows = [writer.close() for writer in writers]
    return {"pairs": rows[0], "src_tokens": writers[0].count, "tgt_tokens": writers[1].count}


def make_shortlist(decoding, partial: Path, tokenizers, seed: int) -> None:
    """IBM Model 1 on a seeded sample of the encoded training pairs (all of them when there are fewer);
    the frequent-token list counts the whole training target side. One streamed pass over the arrays."""
    pairs = np.load(partial / "train" / "src.offsets.npy", mmap_mode="r").shape[0] - 1
    size = min(pairs, decoding.shortlist_pairs)
    chosen = np.sort(np.random.default_rng([seed, 1]).choice(pairs, size, replace=False)) if size < pairs else np.arange(pairs)
    vocab = len(tokenizers[1])
    counts, parts = np.zeros(vocab, dtype=np.int64), []
    for start, chunk in read_chunks(partial / "train"):
        counts += np.bincount(chunk.tgt, minlength=vocab)
        mine = chosen[(chosen >= start) & (chosen < start + len(chunk))] - start
        parts.append(chunk.select(mine))
    shortlist = build_shortlist(concatenate(parts), len(tokenizers[0]), vocab, decoding.shortlist_per_source,
                                decoding.shortlist_frequent, target_counts=counts)
    shortlist = replace(shortlist, tokenizers=(tokenizers[0].fingerprint(), tokenizers[1].fingerprint()))
    shortlist.save(partial / SHORTLIST_NAME, metadata={"sample_pairs": str(size)})
