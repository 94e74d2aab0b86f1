"""Parallel text sources: line-aligned files, TSV, and Hugging Face datasets in the `translation` schema.

Every source yields (source, target) string pairs. Hub datasets are streamed so that WMT'14's 40M
pairs never sit in memory; local JSON lines / parquet files in the same schema go through the same
`datasets` code, which is how the hub path is tested on machines without a network.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

Pair = tuple[str, str]


def open_text(path: Path):
    """Binary handle on a plain or .gz file."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def resolve(prefix: str | Path, lang: str) -> Path:
    """PREFIX.LANG, or PREFIX.LANG.gz when only the compressed copy exists."""
    plain = Path(f"{prefix}.{lang}")
    compressed = Path(f"{plain}.gz")
    if plain.is_file():
        return plain
    if compressed.is_file():
        return compressed
    raise UserError(f"{plain}: no such file (nor {compressed.name})")


SKIP_HINT = "; --skip-invalid-utf8 drops such lines"


def decode_line(raw: bytes, where, number: int, skip_invalid: bool = False, hint: str = "") -> str | None:
    """One line without its newline; invalid UTF-8 is a UserError naming `where` and the line (1-based), or
    None with skip_invalid."""
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        if skip_invalid:
            return None
        raise UserError(f"{where}, line {number}: invalid UTF-8 ({error.reason}){hint}") from None


def iter_text_lines(path: Path, skip_invalid: bool = False) -> Iterator[str | None]:
    """Decoded lines without their newline, streamed. Invalid UTF-8 is a UserError naming file and line,
    or with skip_invalid that line comes back as None (so parallel files stay aligned). An unreadable
    file is a UserError."""
    try:
        with open_text(path) as handle:
            for number, raw in enumerate(handle, start=1):
                yield decode_line(raw, path, number, skip_invalid, SKIP_HINT)
    except (OSError, EOFError) as error:
        raise UserError(f"{path}: cannot be read ({error})") from None


def read_text_lines(path: Path, skip_invalid: bool = False) -> list[str | None]:
    """All of iter_text_lines as a list."""
    return list(iter_text_lines(path, skip_invalid))


def iter_parallel_text(prefix: str | Path, src_lang: str, tgt_lang: str, skip_invalid: bool = False,
                       report: CleaningReport | None = None) -> Iterator[Pair]:
    """Pairs from PREFIX.SRC and PREFIX.TGT (each optionally .gz), streamed in bounded memory; the files
    must have equal line counts (checked when the shorter one ends). With skip_invalid, a pair with
    invalid UTF-8 on either side is dropped and counted in report."""
    src_path, tgt_path = resolve(prefix, src_lang), resolve(prefix, tgt_lang)
    src, tgt = iter_text_lines(src_path, skip_invalid), iter_text_lines(tgt_path, skip_invalid)
    counted = 0
    for a, b in itertools.zip_longest(src, tgt, fillvalue=EOFError):
        if a is EOFError or b is EOFError:
            rest = 1 + sum(1 for _ in (src if b is EOFError else tgt))
            n_src, n_tgt = (counted + rest, counted) if b is EOFError else (counted, counted + rest)
            raise UserError(f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}; parallel files must "
                            f"align line by line")
        counted += 1
        if a is None or b is None:
            if report is not None:
                report.invalid_utf8 += 1
            continue
        yield a, b


def read_parallel_text(prefix: str | Path, src_lang: str, tgt_lang: str, skip_invalid: bool = False,
                       report: CleaningReport | None = None) -> list[Pair]:
    """All of iter_parallel_text as a list."""
    return list(iter_parallel_text(prefix, src_lang, tgt_lang, skip_invalid, report))


def read_tsv(path: str | Path) -> list[Pair]:
    """Pairs from a file of `source<TAB>target` lines."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    pairs = []
    for number, line in enumerate(read_text_lines(path), start=1):
        columns = line.split("\t")
        if len(columns) != 2:
            raise UserError(f"{path}, line {number}: expected 2 tab-separated columns, found {len(columns)}")
        pairs.append((columns[0], columns[1]))
    return pairs


def hf_pairs(rows: Iterable[dict], src_lang: str, tgt_lang: str, where: str) -> Iterator[Pair]:
    """(src, tgt) from rows shaped {"translation": {src_lang: ..., tgt_lang: ...}}."""
    for number, row in enumerate(rows, start=1):
        try:
            translation = row["translation"]
            yield translation[src_lang], translation[tgt_lang]
        except (KeyError, TypeError):
            raise UserError(f"{where}, row {number}: expected {{'translation': {{'{src_lang}': ..., '{tgt_lang}': ...}}}}") from None


def load_hf_pairs(dataset: str, config: str | None, split: str, src_lang: str, tgt_lang: str,
                  *, streaming: bool = True, data_files: str | list[str] | None = None) -> Iterator[Pair]:
    """Stream pairs from a Hugging Face dataset (`wmt/wmt14`, `fr-en`) or from local files through
    the same loader (`json` or `parquet` with data_files). Unreachable hubs are a UserError."""
    import datasets

    try:
        rows = datasets.load_dataset(dataset, config, split=split, streaming=streaming, data_files=data_files)
    except FileNotFoundError as error:
        raise UserError(f"dataset {dataset}: {error}") from None
    except (ConnectionError, OSError, ValueError) as error:
        raise UserError(f"dataset {dataset} ({config}, {split}) could not be loaded: {str(error).splitlines()[0]}") from None
    return hf_pairs(rows, src_lang, tgt_lang, where=f"{dataset}:{split}")


@dataclass
class CleaningReport:
    """How many pairs each filter removed."""

    kept: int = 0
    empty: int = 0
    too_long: int = 0
    bad_ratio: int = 0
    invalid_utf8: int = 0

    def __str__(self) -> str:
        return (f"kept {self.kept} pairs; removed {self.empty} empty, {self.too_long} over the length limit, "
                f"{self.bad_ratio} over the length ratio, {self.invalid_utf8} with invalid UTF-8")


def clean_pairs(pairs: Iterable[Pair], max_words: int = 80, max_ratio: float = 3.0,
                report: CleaningReport | None = None) -> Iterator[Pair]:
    """Drop empty pairs, pairs with a side over max_words words, and pairs whose word-count ratio
    exceeds max_ratio. Counts go into report as the stream is consumed."""
    report = report if report is not None else CleaningReport()
    for src, tgt in pairs:
        src, tgt = src.strip(), tgt.strip()
        n_src, n_tgt = len(src.split()), len(tgt.split())
        if n_src == 0 or n_tgt == 0:
            report.empty += 1
        elif max(n_src, n_tgt) > max_words:
            report.too_long += 1
        elif max(n_src, n_tgt) / min(n_src, n_tgt) > max_ratio:
            report.bad_ratio += 1
        else:
            report.kept += 1
            yield src, tgt


def take(pairs: Iterable[Pair], limit: int | None) -> list[Pair]:
    """At most `limit` pairs of a (possibly streamed) source, as a list."""
    return list(itertools.islice(pairs, limit))
