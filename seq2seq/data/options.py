"""The data flags of the translation recipe and `seq2seq-prepare`, and how they change a preset's data.

Each flag applies on its own: --test-prefix replaces only the test split, --dataset replaces every split
not given as a prefix, --src-lang / --tgt-lang set the pair. A flag that cannot apply (--dataset-config or
--data-files with no dataset to configure) is refused in one line rather than silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..errors import UserError, positive

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "valid", "test")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (each flag replaces only what it names in the preset)")
    group.add_argument("--src-lang", help="source language code, e.g. de (default: the preset's, en)")
    group.add_argument("--tgt-lang", help="target language code (default: the preset's, fr)")
    group.add_argument("--dataset", help="Hugging Face dataset id in the `translation` schema, or json / parquet "
                                         "with --data-files; replaces every split not given by a --*-prefix")
    group.add_argument("--dataset-config", help="the dataset's configuration, e.g. fr-en")
    group.add_argument("--data-files", nargs="+", metavar="[SPLIT=]PATH",
                       help="local files for --dataset json|parquet; SPLIT is train (default), validation or test")
    for split in SPLITS:
        group.add_argument(f"--{split}-prefix", help=f"local PREFIX.SRC / PREFIX.TGT [.gz] {split} files")
    group.add_argument("--max-train-pairs", type=positive(int), help="keep the first N cleaned training pairs")
    group.add_argument("--skip-invalid-utf8", action="store_true",
                       help="drop (and count) pairs with invalid UTF-8 instead of stopping at the first")


def bundled(path: str | None) -> str | None:
    """A preset's relative paths (bundled data, tokenizers) are relative to the repository, not the CWD."""
    return None if path is None or Path(path).is_absolute() else str(ROOT / path)


def data_from_flags(data, args: argparse.Namespace):
    """The preset's TranslationData with the flags applied (see the module docstring)."""
    data = dataclasses.replace(data, **{f"{s}_prefix": bundled(getattr(data, f"{s}_prefix")) for s in SPLITS},
                               tokenizer_dir=bundled(data.tokenizer_dir))
    pair = {key: value for key, value in (("src_lang", args.src_lang), ("tgt_lang", args.tgt_lang)) if value}
    if any(getattr(data, key) != value for key, value in pair.items()):
        data = dataclasses.replace(data, **pair, tokenizer_dir=None)  # other languages, other vocabularies
    if args.dataset:
        data = dataclasses.replace(data, dataset=args.dataset, dataset_config=args.dataset_config,
                                   data_files=tuple(args.data_files or ()), tokenizer_dir=None,
                                   **{f"{s}_prefix": None for s in SPLITS})
    elif args.dataset_config or args.data_files:
        flag = "--dataset-config" if args.dataset_config else "--data-files"
        if not data.dataset:
            raise UserError(f"{flag} needs --dataset: this preset reads local files")
        data = dataclasses.replace(data, dataset_config=args.dataset_config or data.dataset_config,
                                   data_files=tuple(args.data_files or data.data_files), tokenizer_dir=None)
    for split in SPLITS:
        if getattr(args, f"{split}_prefix"):
            data = dataclasses.replace(data, **{f"{split}_prefix": getattr(args, f"{split}_prefix")})
    if args.train_prefix:
        data = dataclasses.replace(data, tokenizer_dir=None)  # new training data, new vocabulary
    if args.max_train_pairs:
        data = dataclasses.replace(data, max_train_pairs=args.max_train_pairs)
    return data
