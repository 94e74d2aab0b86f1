"""Search's encoder over padded batches: packed against by length (seq2seq.lstm._by_length), in one process.

    python benchmarks/encoder_by_length.py --model runs/wmt14_enfr-demo/model [--decode-pairs 16]

The batches are seq2seq-translate's over test_2016_flickr (sorted by length, 64 sentences, EOS-terminated). First the encoder
alone on one thread, the two ways in turn (`--pairs` times), in fp32 and in bf16 search (autocast: packing runs
fp32 whatever autocast says, by length runs bf16); then, with --decode-pairs, the whole beam-5 decode of
`benchmarks/roofline.py` (2 workers) alternating the two, a warm-up pass before each timed one. Prints each
side's median and range and the pairwise ratios (packed / by length: above 1, by length is faster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402  (benchmarks/roofline.py: the decode workload)

from seq2seq import lstm  # noqa: E402
from seq2seq.data.batching import token_batches  # noqa: E402
from seq2seq.data.parallel import read_text_lines  # noqa: E402
from seq2seq.devices import keep_freed_memory  # noqa: E402
from seq2seq.model_dir import load_translator  # noqa: E402
from seq2seq.products import prepare_for_search  # noqa: E402
from seq2seq.tokenizer import to_tensor  # noqa: E402

WAYS = {"packed": lstm._packed, "by length": lstm._by_length}


def padded_batches(src_tok, input_path: str, batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The CLI's batches (seq2seq.translate.translate_lines): (S, B) right-padded source ids ending in EOS, and
    (B,) lengths."""
    ids = src_tok.encode([line for line in read_text_lines(Path(input_path)) if line])
    lengths = [len(i) + 1 for i in ids]
    return [to_tensor([ids[r] for r in rows], eos=True)
            for rows in token_batches(lengths, lengths, 10**9, max_sentences=batch_size, shuffle=False)]


def alternate(run, pairs: int, warm_up: bool) -> dict[str, list[float]]:
    """Seconds of run() with each way of running a padded layer, in turn; by length is left in place."""
    switches = {name: lambda way=way: setattr(lstm, "_by_length", way) for name, way in WAYS.items()}
    try:
        return roofline.alternate(switches, run, pairs, warm_up)
    finally:
        lstm._by_length = WAYS["by length"]


def report(what: str, times: dict[str, list[float]]) -> None:
    ratios = [a / b for a, b in zip(times["packed"], times["by length"])]
    sides = ", ".join(f"{name} {median(v):.3f} s [{min(v):.3f}-{max(v):.3f}]" for name, v in times.items())
    print(f"{what}: {sides}; packed / by length {median(ratios):.3f} [{min(ratios):.2f}-{max(ratios):.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained translation model dir")
    parser.add_argument("--input", default="data/multi30k/test_2016_flickr.en.gz")
    parser.add_argument("--pairs", type=int, default=7, help="alternations of the encoder alone")
    parser.add_argument("--decode-pairs", type=int, default=0, help="alternations of the whole decode (bf16)")
    args = parser.parse_args()
    keep_freed_memory()
    model, src_tok, _, _ = load_translator(args.model)
    batches = padded_batches(src_tok, args.input)
    print(f"torch {torch.__version__} | CPU {torch.backends.cpu.get_cpu_capability()} | {len(batches)} batches, "
          f"{sum(len(set(lengths.tolist())) for _, lengths in batches)} groups of one length")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for dtype in (torch.float32, torch.bfloat16):
        search_model = prepare_for_search(model, torch.device("cpu"), dtype)

        def encode_all():
            with torch.no_grad():
                for src, lengths in batches:
                    search_model.encode(src, lengths)

        report(f"encoder, 1 thread, {'bf16' if dtype == torch.bfloat16 else 'fp32'}",
               alternate(encode_all, args.pairs, warm_up=False))
    torch.set_num_threads(threads)
    if args.decode_pairs:
        run, sentences, _, _ = roofline.decode(True, args.model, args.input, workers=2)
        report(f"beam-5 decode of {sentences:,} sentences, bf16, 2 workers", alternate(run, args.decode_pairs, True))


if __name__ == "__main__":
    main()
