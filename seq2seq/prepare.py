"""`seq2seq-prepare`: the translation data stage alone, e.g. on a CPU node before GPU training.

    seq2seq-prepare --preset paper --output data/wmt14-enfr        # streams WMT'14 from the hub
    seq2seq-prepare --preset demo --train-prefix corpus/train --output prepared/
    accelerate launch recipes/wmt14_enfr.py --preset paper --prepared data/wmt14-enfr

Cleans, trains SentencePiece on a bounded seeded sample, encodes every pair into memory-mapped arrays and
builds the lexical shortlist (seq2seq.data.prepared); prints the manifest's counts and timings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .data.options import add_data_flags, data_from_flags
from .data.prepared import prepare
from .errors import ArgumentParser, exits_cleanly


def parse_args(argv):
    from .presets import TRANSLATION_PRESETS

    parser = ArgumentParser(prog="seq2seq-prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=TRANSLATION_PRESETS, default="paper",
                        help="whose data, vocabulary and shortlist settings to use (default: paper)")
    parser.add_argument("--output", type=Path, required=True, help="the prepared corpus directory")
    add_data_flags(parser)
    return parser.parse_args(argv)


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    from .presets import TRANSLATION_PRESETS

    args = parse_args(argv)
    preset = TRANSLATION_PRESETS[args.preset]()
    corpus = prepare(data_from_flags(preset.data, args), preset.decoding, args.output,
                     skip_invalid_utf8=args.skip_invalid_utf8, explicit=True,
                     log=lambda line: print(line, file=sys.stderr))  # stdout carries only the JSON summary
    summary = {key: corpus.manifest[key] for key in ("counts", "timings")}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
