"""Beam-5 decoding with this tree's search kernels against another version of csrc/search_cell.cpp, in one process.

    git show 479c0f2:seq2seq/csrc/search_cell.cpp > /tmp/search_cell_old.cpp
    python benchmarks/search_kernel_ab.py --other /tmp/search_cell_old.cpp --model runs/wmt14_enfr-demo/model

Both sources are compiled as seq2seq's own kernel is (same flags and headers, under two module names) and the
decode of `benchmarks/roofline.py` (seq2seq-translate's search over test_2016_flickr, 2 workers) alternates between
them, a warm-up pass before each timed one: a shared machine's speed drifts by more than a kernel change gains,
and pairs taken minutes apart in fresh processes do not separate the two. Prints each side's times, their medians
and the pairwise ratios (other / this: above 1, this tree is faster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import roofline  # noqa: E402  (benchmarks/roofline.py: the decode workload)

from seq2seq import native, products, translator  # noqa: E402
from seq2seq.devices import keep_freed_memory  # noqa: E402


def use(kernel) -> None:
    """Search with `kernel` as its compiled search-step functions."""
    translator.search_cell_kernel = products.search_cell_kernel = lambda: kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="the search_cell.cpp to compare with")
    parser.add_argument("--model", required=True, help="a trained translation model dir")
    parser.add_argument("--input", default="data/multi30k/test_2016_flickr.en.gz")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/seq2seq-search-kernel-ab"))
    args = parser.parse_args()
    keep_freed_memory()
    kernels = {side: native.build(f"search_cell_{side}", source, args.build_dir / side, native.search_cell_flags())
               for side, source in (("other", args.other), ("this", native.SOURCES / "search_cell.cpp"))}
    run, sentences, _, _ = roofline.decode(args.dtype == "bf16", args.model, args.input, workers=2)
    times = roofline.alternate({name: lambda kernel=kernel: use(kernel) for name, kernel in kernels.items()},
                               run, args.pairs)
    print(f"torch {torch.__version__} | CPU {torch.backends.cpu.get_cpu_capability()} | {args.dtype} | beam 5 over "
          f"{sentences:,} sentences, 2 workers | seconds a pass, alternating")
    for name, values in times.items():
        print(f"  {name:<5} " + " ".join(f"{v:.2f}" for v in values) + f"   median {median(values):.3f} s")
    ratios = [a / b for a, b in zip(times["other"], times["this"])]
    print("  other / this: " + " ".join(f"{r:.2f}" for r in ratios) + f"   median {median(ratios):.3f}")


if __name__ == "__main__":
    main()
