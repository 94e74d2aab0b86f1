import gzip
import json
import random

import numpy as np
import pytest
import torch

from seq2seq.data.batching import collate, shard_evenly, token_batches
from seq2seq.data.encoded import ArrayWriter, EncodedPairs
from seq2seq.data.parallel import CleaningReport, clean_pairs, load_hf_pairs, read_parallel_text, read_tsv
from seq2seq.errors import UserError
from seq2seq.tokenizer import BOS, EOS, PAD

PAIRS = [("a small dog", "un petit chien"), ("two men", "deux hommes"), ("the cat sleeps", "le chat dort")]


def write_parallel(prefix, pairs, compress=False):
    for i, lang in enumerate(("en", "fr")):
        text = "".join(p[i] + "\n" for p in pairs).encode()
        if compress:
            with gzip.open(f"{prefix}.{lang}.gz", "wb") as handle:
                handle.write(text)
        else:
            with open(f"{prefix}.{lang}", "wb") as handle:
                handle.write(text)


@pytest.mark.parametrize("compress", [False, True])
def test_line_aligned_files_plain_or_gzip(tmp_path, compress):
    write_parallel(tmp_path / "train", PAIRS, compress)
    assert read_parallel_text(tmp_path / "train", "en", "fr") == PAIRS


def test_misaligned_files_name_both_files_and_counts(tmp_path):
    write_parallel(tmp_path / "train", PAIRS)
    (tmp_path / "train.fr").write_text("un\ndeux\n")
    with pytest.raises(UserError, match=r"train.en has 3 lines but .*train.fr has 2"):
        read_parallel_text(tmp_path / "train", "en", "fr")


def test_invalid_utf8_names_file_and_line(tmp_path):
    write_parallel(tmp_path / "train", PAIRS)
    (tmp_path / "train.fr").write_bytes(b"un\n\xc3\x28 deux\ntrois\n")
    with pytest.raises(UserError, match=r"train.fr, line 2: invalid UTF-8"):
        read_parallel_text(tmp_path / "train", "en", "fr")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(UserError, match=r"absent.en: no such file"):
        read_parallel_text(tmp_path / "absent", "en", "fr")


def test_tsv(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS))
    assert read_tsv(path) == PAIRS
    path.write_text("one\ttwo\tthree\n")
    with pytest.raises(UserError, match="line 1: expected 2 tab-separated columns, found 3"):
        read_tsv(path)


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_hub_schema_through_datasets_on_local_files(tmp_path, fmt):
    rows = [{"translation": {"en": a, "fr": b}} for a, b in PAIRS]
    if fmt == "json":
        path = tmp_path / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import datasets

        path = tmp_path / "train.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    pairs = list(load_hf_pairs(fmt, None, "train", "en", "fr", data_files=str(path)))
    assert pairs == PAIRS


def test_hub_rows_of_another_schema_are_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"en": "a", "fr": "b"}) + "\n")
    with pytest.raises(UserError, match="row 1: expected"):
        list(load_hf_pairs("json", None, "train", "en", "fr", data_files=str(path)))


def test_cleaning_counts_each_filter():
    pairs = [("a b", "c d"), ("", "x"), ("w " * 90, "w " * 90), ("a", "b c d e"), ("ok then", "d'accord alors")]
    report = CleaningReport()
    kept = list(clean_pairs(pairs, max_words=80, max_ratio=3.0, report=report))
    assert kept == [("a b", "c d"), ("ok then", "d'accord alors")]
    assert (report.kept, report.empty, report.too_long, report.bad_ratio) == (2, 1, 1, 1)


def plan_by_loop(src, tgt, max_tokens, max_sentences, seed, epoch, pool_batches, shuffle=True):
    """The batch plan as the toolkit computed it before it ran on arrays (commit f5728a6, its loops inlined):
    Python lists shuffled by random.Random, sorted() per pool and a greedy fill one example at a time."""
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(src)))
    if shuffle:
        rng.shuffle(order)
    size = [max(src[i], tgt[i]) + 1 for i in order]
    pool = max(1, pool_batches * max_tokens // max(1, sum(size) // max(1, len(size))))
    batches = []
    for start in range(0, len(order), pool):
        members = sorted(order[start : start + pool], key=lambda i: (tgt[i], src[i]))
        current, longest = [], 0
        for i in members:
            longest_if_added = max(longest, max(src[i], tgt[i]) + 1)
            full = max_sentences is not None and len(current) >= max_sentences
            if current and (longest_if_added * (len(current) + 1) > max_tokens or full):
                batches.append(current)
                current, longest_if_added = [], max(src[i], tgt[i]) + 1
            current.append(i)
            longest = longest_if_added
        if current:
            batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


@pytest.mark.parametrize("max_tokens, max_sentences, shuffle", [(120, None, True), (50, 3, True), (10**6, 64, True),
                                                                 (7, None, True), (200, None, False),
                                                                 (10**9, 16, False)])  # evaluation: one pool
def test_batch_plan_from_arrays_equals_the_loop(max_tokens, max_sentences, shuffle):
    src = np.array([1 + (i * 7) % 23 for i in range(500)], dtype=np.uint16)  # as a prepared corpus stores them
    tgt = np.array([1 + (i * 5) % 19 for i in range(500)], dtype=np.uint16)
    plan = token_batches(src, tgt, max_tokens, max_sentences=max_sentences, seed=3, epoch=1, pool_batches=10,
                         shuffle=shuffle)
    expected = plan_by_loop(src.tolist(), tgt.tolist(), max_tokens, max_sentences, 3, 1, 10, shuffle)
    assert [b.tolist() for b in plan] == expected


def test_token_batches_cover_everything_once_within_budget_and_are_seeded():
    src = [1 + (i * 7) % 23 for i in range(500)]
    tgt = [1 + (i * 5) % 19 for i in range(500)]
    batches = [b.tolist() for b in token_batches(src, tgt, max_tokens=120, seed=3, epoch=1, pool_batches=10)]
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) * max(max(src[i], tgt[i]) + 1 for i in b) <= 120 for b in batches)
    again = token_batches(src, tgt, max_tokens=120, seed=3, epoch=1, pool_batches=10)
    assert batches == [b.tolist() for b in again]
    assert batches != [b.tolist() for b in token_batches(src, tgt, max_tokens=120, seed=3, epoch=2, pool_batches=10)]
    capped = token_batches(src, tgt, max_tokens=10**6, max_sentences=64, seed=0)
    assert max(len(b) for b in capped) == 64


def test_corpus_batches_equal_collate_from_memory_or_memory_map(tmp_path):
    rng = np.random.default_rng(0)
    src = [rng.integers(4, 300, rng.integers(1, 9)).tolist() for _ in range(40)]
    tgt = [rng.integers(4, 300, rng.integers(1, 9)).tolist() for _ in range(40)]
    writers = [ArrayWriter(tmp_path / f"{side}.tokens.npy", tmp_path / f"{side}.offsets.npy", np.uint16)
               for side in ("src", "tgt")]
    for start in range(0, 40, 15):  # appended in chunks, as preparation does
        writers[0].append(src[start : start + 15])
        writers[1].append(tgt[start : start + 15])
    assert [w.close() for w in writers] == [40, 40]
    mapped, memory = EncodedPairs.open(tmp_path), EncodedPairs.from_rows(src, tgt)
    assert isinstance(mapped.src, np.memmap) and mapped.src.dtype == np.uint16
    for index in ([3, 17, 5], [0], list(range(40))):
        expected = collate([src[i] for i in index], [tgt[i] for i in index], index)
        for corpus in (mapped, memory):
            batch = corpus.batch(np.array(index))
            for name in ("src", "src_lengths", "tgt_in", "tgt_out", "index"):
                assert torch.equal(getattr(batch, name), getattr(expected, name)), name
    sample = mapped.select(np.array([5, 2]))
    assert [sample.row(sample.tgt, sample.tgt_offsets, i) for i in range(2)] == [tgt[5], tgt[2]]


def test_collate_pads_and_shifts_targets():
    batch = collate([[5, 6], [7]], [[8], [9, 10]], [4, 9])
    assert batch.src.t().tolist() == [[5, 6, EOS], [7, EOS, PAD]]
    assert batch.src_lengths.tolist() == [3, 2]
    assert batch.tgt_in.t().tolist() == [[BOS, 8, PAD], [BOS, 9, 10]]
    assert batch.tgt_out.t().tolist() == [[8, EOS, PAD], [9, 10, EOS]]
    assert batch.index.tolist() == [4, 9]


@pytest.mark.parametrize("count, processes", [(7, 2), (10, 4), (9, 3), (5, 8)])
def test_shard_evenly_uses_every_example_once_in_equal_shares(count, processes):
    batches = [list(range(10 * i, 10 * i + 3 + i % 3)) for i in range(count)]
    shares = [shard_evenly(batches, processes, rank) for rank in range(processes)]
    assert len({len(share) for share in shares}) == 1
    examples = sorted(i for share in shares for batch in share for i in batch)
    assert examples == sorted(i for batch in batches for i in batch)
    # Shares of the batches before the split ones are those of plain round robin.
    untouched = count - count % processes if count % processes else count
    for rank, share in enumerate(shares):
        assert share[: len(batches[rank:untouched:processes])] == batches[rank:untouched:processes]
