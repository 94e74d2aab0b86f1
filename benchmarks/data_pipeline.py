"""The translation data stage at scale: preparation speed against SentencePiece's own encoding rate, peak
memory, disk, time to the first training step (cold and warm), and the batch loader against training.

    python benchmarks/data_pipeline.py --pairs 1000000 4000000
    python benchmarks/data_pipeline.py --train-prefix corpus/train --pairs 0      # given files instead

A corpus of N pairs with WMT-like lengths is generated from the bundled Multi30k (two random training
sentences joined on each side, ~24 words, seeded); valid/test are 200 bundled pairs each. Everything runs
with the demo preset's data settings (4k SentencePiece per language on a 100k-pair sample, a 5 + 300
shortlist) through `seq2seq-prepare` in a child process, so its peak RSS is the preparation's own.
Prints one table row per corpus size and the extrapolation to 12M and 40.8M pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seq2seq.data.batching import token_batches  # noqa: E402
from seq2seq.data.parallel import clean_pairs, iter_parallel_text  # noqa: E402
from seq2seq.data.prepared import open_prepared  # noqa: E402
from seq2seq.presets import translation_demo  # noqa: E402
from seq2seq.translator import Translator  # noqa: E402

CORES = len(os.sched_getaffinity(0))


def bundled_lines(name: str, lang: str) -> list[str]:
    with gzip.open(ROOT / "data" / "multi30k" / f"{name}.{lang}.gz", "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def generate(prefix: Path, pairs: int, seed: int = 0) -> None:
    """PREFIX.en / PREFIX.fr: each line two random Multi30k training sentences joined."""
    if prefix.with_suffix(".fr").is_file():
        return
    en, fr = bundled_lines("train", "en"), bundled_lines("train", "fr")
    rng = np.random.default_rng(seed)
    with prefix.with_suffix(".en").open("w") as src, prefix.with_suffix(".fr").open("w") as tgt:
        for start in range(0, pairs, 100_000):
            i, j = rng.integers(0, len(en), (2, min(100_000, pairs - start)))
            src.write("".join(f"{en[a]} {en[b]}\n" for a, b in zip(i, j)))
            tgt.write("".join(f"{fr[a]} {fr[b]}\n" for a, b in zip(i, j)))


def small_split(prefix: Path, name: str) -> None:
    for lang in ("en", "fr"):
        prefix.with_suffix(f".{lang}").write_text("\n".join(bundled_lines(name, lang)[:200]) + "\n")


def data_flags(train: Path, work: Path) -> list[str]:
    return ["--train-prefix", str(train), "--valid-prefix", str(work / "valid"), "--test-prefix", str(work / "test")]


def prepare_in_child(train: Path, work: Path, output: Path) -> dict:
    """seq2seq-prepare in a fresh process: its wall time and its own peak RSS."""
    code = ("import json, resource, sys, time; from seq2seq.prepare import main; t = time.time(); "
            "main(sys.argv[1:]); m = json.load(open(sys.argv[sys.argv.index('--output') + 1] + '/manifest.json')); "
            "print('RESULT', json.dumps({'wall': time.time() - t, 'manifest': m, "
            "'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    done = subprocess.run([sys.executable, "-c", code, "--preset", "demo", "--output", str(output),
                           *data_flags(train, work)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.split("RESULT ", 1)[1])


def sentencepiece_rate(train: Path, corpus) -> float:
    """Pairs/s of SentencePiece's own batch encoding of both sides (num_threads = cores), the texts read
    beforehand: the limit of any pass that must tokenise everything."""
    seconds, count = 0.0, 0
    with train.with_suffix(".en").open() as src, train.with_suffix(".fr").open() as tgt:
        while True:
            chunk = [(a.rstrip("\n"), b.rstrip("\n")) for _, a, b in zip(range(200_000), src, tgt)]
            if not chunk:
                return count / seconds
            started = time.perf_counter()
            corpus.src_tok.processor.encode([a for a, _ in chunk], num_threads=CORES)
            corpus.tgt_tok.processor.encode([b for _, b in chunk], num_threads=CORES)
            seconds += time.perf_counter() - started
            count += len(chunk)


def reader_rate(train: Path, limit: int = 1_000_000) -> float:
    """Pairs/s of the single Python thread that reads, decodes and cleans (the part SentencePiece's
    threads do not share): the bound of an encode pass on many cores."""
    started = time.perf_counter()
    count = sum(1 for _ in itertools.islice(clean_pairs(iter_parallel_text(train, "en", "fr")), limit))
    return count / (time.perf_counter() - started)


def first_step(train: Path, work: Path, prepared: Path, output: Path) -> float:
    """Seconds from launching the recipe to its first update (the recipe measures it from process start)."""
    shutil.rmtree(output, ignore_errors=True)
    done = subprocess.run([sys.executable, "recipes/wmt14_enfr.py", "--preset", "demo", *data_flags(train, work),
                           "--prepared", str(prepared), "--output-dir", str(output), "--max-steps", "1"],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads((output / "results.json").read_text())["first_update_s"]


def loader_and_training(prepared: Path) -> dict:
    """The epoch's batch plan (time, memory), then batches/s of the loader alone vs the demo model's steps/s."""
    corpus = open_prepared(prepared)
    train, preset = corpus.splits["train"], translation_demo()
    tracemalloc.start()
    started = time.perf_counter()
    plan = token_batches(train.src_lengths(), train.tgt_lengths(), preset.training.max_tokens, seed=0)
    plan_s = time.perf_counter() - started
    plan_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    started = time.perf_counter()
    for indices in plan[:2000]:
        train.batch(indices)
    loader = min(2000, len(plan)) / (time.perf_counter() - started)
    torch.manual_seed(0)
    model = Translator(dataclasses.replace(preset.model, src_vocab_size=len(corpus.src_tok),
                                           tgt_vocab_size=len(corpus.tgt_tok)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [train.batch(indices) for indices in plan[:12]]
    for i, batch in enumerate(batches):
        if i == 2:  # two warm-up steps
            started = time.perf_counter()
        loss, count = model(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out, 0.1)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad()
    steps = 10 / (time.perf_counter() - started)
    return {"plan_s": plan_s, "plan_mb": plan_mb, "batches": len(plan), "loader_batches_s": loader,
            "train_steps_s": steps}


def _encode_batch(batch: dict, src_model: str, tgt_model: str) -> dict:
    import sentencepiece as spm

    src, tgt = (spm.SentencePieceProcessor(model_file=m) for m in (src_model, tgt_model))
    return {"src_ids": src.encode(batch["src"]), "tgt_ids": tgt.encode(batch["tgt"])}


def arrow_alternative(train: Path, prepared: Path, work: Path, limit: int) -> dict:
    """The other storage the toolkit could use: Hugging Face `datasets` Arrow, built with
    map(batched=True, num_proc=cores) + save_to_disk from the same pairs with the same SentencePiece
    models (no cleaning: it only favours Arrow), then read back batch by batch."""
    import datasets

    datasets.disable_progress_bars()
    target = work / "arrow"
    shutil.rmtree(target, ignore_errors=True)

    def pairs():
        with train.with_suffix(".en").open() as src, train.with_suffix(".fr").open() as tgt:
            for _, a, b in zip(range(limit), src, tgt):
                yield {"src": a.rstrip("\n"), "tgt": b.rstrip("\n")}

    started = time.perf_counter()
    table = datasets.Dataset.from_generator(pairs, cache_dir=str(work / "hf-cache"))
    models = {"src_model": str(prepared / "tokenizers" / "en.model"), "tgt_model": str(prepared / "tokenizers" / "fr.model")}
    table = table.map(_encode_batch, batched=True, batch_size=10_000, num_proc=CORES, fn_kwargs=models,
                      remove_columns=["src", "tgt"])
    table.save_to_disk(str(target))
    seconds = time.perf_counter() - started
    table = datasets.load_from_disk(str(target))
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(500):
        table[rng.integers(0, len(table), 80)]
    shutil.rmtree(work / "hf-cache", ignore_errors=True)
    return {"arrow_pairs_s": limit / seconds, "arrow_disk_mb_per_million": disk_mb(target) / limit * 1e6,
            "arrow_batches_s": 500 / (time.perf_counter() - started)}


def disk_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**20


def measure(pairs: int, train: Path, work: Path) -> dict:
    prepared = work / f"prepared-{pairs}"
    shutil.rmtree(prepared, ignore_errors=True)
    cold = first_step(train, work, prepared, work / "run-cold")  # prepares on the way
    timings_cold = json.loads((prepared / "manifest.json").read_text())["timings"]
    warm = first_step(train, work, prepared, work / "run-warm")
    shutil.rmtree(prepared)
    child = prepare_in_child(train, work, prepared)
    corpus = open_prepared(prepared)
    count = corpus.manifest["counts"]["train"]["pairs"]
    timings = child["manifest"]["timings"]
    spm_rate, reader = sentencepiece_rate(train, corpus), reader_rate(train)
    without_shortlist = timings["total_s"] - timings.get("shortlist_s", 0.0)
    row = {"pairs": count, "spm_pairs_s": spm_rate, "reader_pairs_s": reader, "prepare_wall_s": child["wall"], "timings": timings,
           "prepare_pairs_s": count / without_shortlist, "encode_pass_pairs_s": count / timings["encode_s"],
           "efficiency": count / without_shortlist / spm_rate, "encode_efficiency": count / timings["encode_s"] / spm_rate,
           "shortlist_share": timings.get("shortlist_s", 0.0) / timings["total_s"], "rss_mb": child["rss_mb"],
           "disk_mb_per_million": disk_mb(prepared) / count * 1e6, "first_step_cold_s": cold,
           "first_step_warm_s": warm, "cold_prepare_s": timings_cold["total_s"], **loader_and_training(prepared)}
    row["loader_vs_training"] = row["loader_batches_s"] / row["train_steps_s"]
    return row


def report(rows: list[dict]) -> None:
    print(f"\nCPU: {torch.backends.cpu.get_cpu_capability()}, {CORES} cores")
    print("| pairs | SentencePiece alone | reader | preparation (no shortlist) | encode pass | shortlist | total | "
          "peak RSS | disk / 1M pairs | first step cold / warm | plan | loader / training |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["timings"]
        print(f"| {r['pairs']:,} | {r['spm_pairs_s']:,.0f} pairs/s | {r['reader_pairs_s']:,.0f} pairs/s | {r['prepare_pairs_s']:,.0f} pairs/s "
              f"({r['efficiency']:.0%}) | {r['encode_pass_pairs_s']:,.0f} pairs/s ({r['encode_efficiency']:.0%}) | "
              f"{t.get('shortlist_s', 0):.1f} s ({r['shortlist_share']:.0%}) | {t['total_s']:.1f} s | {r['rss_mb']:,.0f} MB | "
              f"{r['disk_mb_per_million']:,.0f} MB | {r['first_step_cold_s']:.1f} / {r['first_step_warm_s']:.1f} s | "
              f"{r['plan_s']:.2f} s, {r['plan_mb']:.0f} MB | {r['loader_batches_s']:,.0f} / {r['train_steps_s']:.2f} "
              f"steps/s = {r['loader_vs_training']:,.0f}x |")
    last = rows[-1]
    for target in (12_000_000, 40_800_000):
        scale = target / last["pairs"]
        fixed = last["timings"].get("sentencepiece_training_s", 0.0) + last["timings"].get("shortlist_s", 0.0)
        variable = last["timings"]["total_s"] - fixed
        two = fixed + variable * scale
        bound = min(last["spm_pairs_s"] / CORES * 32, last["reader_pairs_s"])  # SentencePiece on 32 cores, or the reader
        many = fixed + target / bound
        per_rank = (last["plan_mb"] + 8 * last["pairs"] / 2**20) * scale  # the plan and the two int32 length arrays
        print(f"{target / 1e6:.1f}M pairs: disk {last['disk_mb_per_million'] * target / 1e6 / 1024:.1f} GB, "
              f"preparation ~{two / 60:.0f} min on {CORES} cores, ~{many / 60:.0f} min on 32 (bounded by "
              f"{bound:,.0f} pairs/s: SentencePiece's {last['spm_pairs_s'] / CORES:,.0f} a core x 32, or the "
              f"single reader's {last['reader_pairs_s']:,.0f}); memory per training rank ~{per_rank / 1024:.1f} GB "
              f"(batch plan + lengths; the token arrays are mapped and shared by the ranks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--train-prefix", type=Path, help="given PREFIX.en / PREFIX.fr instead of generated pairs")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/data_pipeline"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--arrow", type=int, metavar="PAIRS", help="also build the first PAIRS pairs of the first "
                        "corpus as Hugging Face Arrow (datasets map + save_to_disk) and compare")
    args = parser.parse_args()
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    small_split(work / "valid", "val")
    small_split(work / "test", "test_2016_flickr")
    rows = []
    for pairs in args.pairs:
        train = args.train_prefix or work / f"train-{pairs}"
        if not args.train_prefix:
            generate(train, pairs)
        rows.append(measure(pairs, train.resolve(), work))
        print(json.dumps(rows[-1]), flush=True)
    report(rows)
    if args.arrow:
        first = args.train_prefix or work / f"train-{args.pairs[0]}"
        prepared = work / f"prepared-{args.pairs[0]}"  # its tokenizers
        if not (prepared / "manifest.json").is_file():
            prepare_in_child(first.resolve(), work, prepared)
        arrow = arrow_alternative(first.resolve(), prepared, work, args.arrow)
        print(f"Arrow (datasets map, num_proc={CORES}, save_to_disk), {args.arrow:,} pairs: {arrow['arrow_pairs_s']:,.0f} "
              f"pairs/s (SentencePiece only, no cleaning), {arrow['arrow_disk_mb_per_million']:,.0f} MB per million pairs, "
              f"{arrow['arrow_batches_s']:,.0f} random 80-pair batches/s read back")
        rows.append(arrow)
    if args.json:
        args.json.write_text(json.dumps({"cpu": torch.backends.cpu.get_cpu_capability(), "cores": CORES,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
