"""Host synchronisations per beam-search step: the operations that make the host wait for a GPU.

    python benchmarks/search_syncs.py [--before COMMIT]

Counts, while beam search decodes test_2016_flickr sentences with a demo-shaped model, every device-to-host
transfer (`.tolist()`, `.item()`, `bool(tensor)`) and every operation whose output size depends on the data
(`nonzero`, `unique`), per decoding step. Counted on the CPU through torch's dispatcher, so it runs
anywhere; on a GPU each of these is a stall. `torch.unique` in the decoder step runs only on the CPU path
(where it saves work and costs no stall), so it is listed apart. --before also counts the search of an
earlier commit (its seq2seq/search.py), for comparison.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seq2seq import search  # noqa: E402
from seq2seq.presets import translation_demo  # noqa: E402
from seq2seq.tokenizer import Tokenizer, to_tensor  # noqa: E402
from seq2seq.translator import Translator  # noqa: E402

DATA_DEPENDENT = {"aten::nonzero": "nonzero", "aten::_unique2": "unique (CPU path only)",
                  "aten::unique_dim": "unique (CPU path only)", "aten::_local_scalar_dense": "item / bool",
                  "aten::masked_select": "masked_select"}


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = DATA_DEPENDENT.get(func._schema.name)
        if name:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count(beam_search, model, batches, beam: int) -> tuple[collections.Counter, int]:
    """Counts by kind and the number of decoding steps over all batches."""
    steps = 0
    original_step, original_tolist = model.step, torch.Tensor.tolist

    def step(*args, **kwargs):
        nonlocal steps
        steps += 1
        return original_step(*args, **kwargs)

    counter = Counter()

    def tolist(self):
        counter.counts["tolist"] += 1
        return original_tolist(self)

    model.step, torch.Tensor.tolist = step, tolist
    try:
        with counter:
            for src, lengths in batches:
                beam_search(model, src, lengths, beam_size=beam, alpha=0.6)
    finally:
        model.step, torch.Tensor.tolist = original_step, original_tolist
    return counter.counts, steps


def earlier_search(commit: str):
    source = subprocess.check_output(["git", "show", f"{commit}:seq2seq/search.py"], cwd=ROOT, text=True)
    spec = importlib.util.spec_from_loader("seq2seq.search_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "seq2seq"
    sys.modules[spec.name] = module  # its dataclasses look their module up
    exec(compile(source, f"{commit}:seq2seq/search.py", "exec"), module.__dict__)
    return module.beam_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=128)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--before", help="also count the beam search of this commit")
    args = parser.parse_args()
    preset = translation_demo()
    src_tok = Tokenizer(ROOT / "tokenizers/multi30k/en.model")
    config = dataclasses.replace(preset.model, src_vocab_size=len(src_tok), tgt_vocab_size=4000)
    torch.manual_seed(0)
    model = Translator(config).eval()
    with gzip.open(ROOT / "data/multi30k/test_2016_flickr.en.gz", "rt") as handle:
        lines = handle.read().splitlines()[: args.sentences]
    ids = src_tok.encode(lines)
    batches = [to_tensor(ids[i : i + 64], eos=True) for i in range(0, len(ids), 64)]
    runs = [("this code", search.beam_search)]
    if args.before:
        runs.append((f"commit {args.before}", earlier_search(args.before)))
    for name, beam_search in runs:
        with torch.no_grad():
            counts, steps = count(beam_search, model, batches, args.beam)
        stalls = sum(v for k, v in counts.items() if not k.startswith("unique"))
        detail = ", ".join(f"{k} {v / steps:.2f}" for k, v in sorted(counts.items()))
        print(f"{name}: {steps} steps over {len(batches)} batches of up to 64 sentences, beam {args.beam}: "
              f"{stalls / steps:.2f} host syncs per step on a GPU ({detail} per step)")


if __name__ == "__main__":
    main()
