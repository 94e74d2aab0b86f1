"""`seq2seq-translate`: translate lines with a trained model directory, optionally scoring against a reference.

    seq2seq-translate --model runs/wmt14_enfr-demo/model < test.en > test.fr
    seq2seq-translate --model DIR --input test.en --ref test.fr --beam-size 5 --results-json scores.json
    seq2seq-translate --model DIR --input test.en --ref test.fr --compare other.fr  # paired bootstrap vs other.fr
    seq2seq-translate --model DIR                  # in a terminal: each line typed is answered at once

One line in, one line out, in order; an empty line gives an empty line. Input is read and translated in
chunks of --buffer-size lines, each written and flushed as soon as it is done (a chunk is cut early when no
more input is waiting, so a terminal or a pipe fed line by line gets every line answered), which keeps memory
flat on any input length. With --nbest N each input line gives exactly N lines in the Moses / Marian n-best
format

    INDEX ||| HYPOTHESIS ||| F0= LOGPROB ||| SCORE

INDEX counts input lines from 0, LOGPROB = log P(y </s> | x) without length penalty, SCORE = LOGPROB /
((5 + |y| + 1) / 6)^alpha (|y| + 1 counts </s>), best first; when search finished fewer than N hypotheses
the list is padded with copies of the best one. Reads only safetensors + JSON + SentencePiece files. When
the model directory has a lexical shortlist (shortlist.safetensors, seq2seq.shortlist), search uses it;
--no-shortlist searches the whole target vocabulary.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from . import __version__
from .checkpoint import write_json
from .data.batching import token_batches
from .data.parallel import decode_line, open_text, read_text_lines
from .devices import DTYPES, choose_device, choose_dtype, keep_freed_memory
from .errors import ArgumentParser, UserError, exits_cleanly, positive
from .metrics import check_aligned, corpus_scores, paired_bootstrap
from .model_dir import load_translator
from .products import prepare_for_search
from .search import Hypothesis, beam_search
from .shortlist import SHORTLIST_NAME, Shortlist, load_shortlist
from .tokenizer import Tokenizer, to_tensor

DEFAULTS = {"beam_size": 5, "alpha": 0.0, "max_len_a": 1.5, "max_len_b": 10}  # when the model's config has none
# Lines read at a time, in batches: with one batch a chunk (the earlier default) the second worker had nothing
# to do and no batch was sorted by length beyond its own lines; beam 5 over test_2016_flickr with the demo model
# took 2.75 s of search in chunks of 64 lines and 1.47 s in one chunk of 1,000 (the same output, fp32 and bf16).
BATCHES_PER_CHUNK = 16


def translate_lines(model, src_tok: Tokenizer, tgt_tok: Tokenizer, lines: list[str], *, beam_size: int, alpha: float,
                    max_len_a: float, max_len_b: int, batch_size: int, nbest: int = 1, shortlist: Shortlist | None = None,
                    workers: int = 1, alignment: bool = False) -> list[list[tuple[str, Hypothesis | None, str]]]:
    """(text, hypothesis, alignment) n-best lists of every line, in input order, decoded on the model's
    device; an empty line gives ("", None, "") entries. alignment: `s-t` pairs (see alignment_pairs), or ""
    when not asked for.

    workers > 1 decodes that many batches at once in threads, splitting torch's threads between them: at
    one decoding step the matrices are small, and two batches side by side keep two CPU cores busier
    than one batch on two (CTranslate2's inter_threads)."""
    device = next(model.parameters()).device
    ids = src_tok.encode(lines)
    results: list[list[Hypothesis | None]] = [[None] * nbest for _ in lines]
    todo = [i for i, line in enumerate(lines) if line.strip()]
    lengths = [len(ids[i]) + 1 for i in todo]
    batches = [[todo[j] for j in chunk]
               for chunk in token_batches(lengths, lengths, 10**9, max_sentences=batch_size, shuffle=False)]
    batches.sort(key=lambda rows: -sum(len(ids[i]) for i in rows))  # longest first: no long batch runs alone at the end

    def search(rows: list[int]) -> list[list[Hypothesis]]:
        src, src_lengths = to_tensor([ids[i] for i in rows], eos=True)
        return beam_search(model, src.to(device), src_lengths.to(device), beam_size, alpha, max_len_a, max_len_b,
                           nbest=nbest, shortlist=shortlist, alignment=alignment)

    with threads_split(workers if device.type == "cpu" else 1) as pool:
        for rows, found in zip(batches, pool.map(search, batches) if pool else map(search, batches)):
            for i, hyps in zip(rows, found):
                results[i] = (hyps + hyps[:1] * nbest)[:nbest]  # exactly nbest: padded with the best
    texts = iter(tgt_tok.decode([list(h.tokens) if h else [] for row in results for h in row]))
    reverse = model.config.reverse_source
    return [[(next(texts), h, alignment_pairs(h, len(ids[i]) + 1, reverse) if alignment and h else "") for h in row]
            for i, row in enumerate(results)]


def alignment_pairs(hypothesis: Hypothesis, source_length: int, reversed_source: bool) -> str:
    """Moses / fast_align `s-t` pairs: target piece t (0-based, </s> left out) attended most to source piece s
    (0-based, in the input's order; attention on the source's </s> gives no pair)."""
    pairs = []
    for target, position in enumerate(hypothesis.alignment[: len(hypothesis.tokens)]):
        source = source_length - 1 - position if reversed_source else position  # the encoder read it reversed
        if source < source_length - 1:
            pairs.append(f"{source}-{target}")
    return " ".join(pairs)


@contextmanager
def threads_split(workers: int):
    """A thread pool of `workers` (None for 1) with torch's intra-op threads divided among them."""
    if workers <= 1:
        yield None
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    try:
        with ThreadPoolExecutor(workers) as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


# --- Input in chunks, output as it comes ---

class LineReader:
    """Lines of a file descriptor as bytes, `limit` at a time, without waiting for more input than is
    already there once one line is complete (select on the descriptor)."""

    def __init__(self, fd: int):
        self.fd, self.pending, self.eof = fd, b"", False

    def lines(self, limit: int) -> list[bytes]:
        found: list[bytes] = []
        while len(found) < limit:
            if b"\n" in self.pending:
                line, self.pending = self.pending.split(b"\n", 1)
                found.append(line)
            elif self.eof:
                if self.pending:
                    found.append(self.pending)
                    self.pending = b""
                break
            elif found and not select.select([self.fd], [], [], 0)[0]:
                break  # nothing more waiting: answer what we have
            else:
                data = os.read(self.fd, 1 << 16)
                self.eof = not data
                self.pending += data
        return found


def input_chunks(name: str, size: int) -> Iterator[list[str]]:
    """Decoded lines of --input (a file, .gz too) or stdin ("-"), `size` at a time; invalid UTF-8 is a
    UserError naming the line."""
    if name == "-":
        source, reader, label = None, LineReader(sys.stdin.fileno()), "stdin"
    else:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"--input {path}: no such file")
        source, label = open_text(path), str(path)
    number = 0
    try:
        while True:
            raw = reader.lines(size) if source is None else [line for _, line in zip(range(size), source)]
            if not raw:
                return
            yield [decode_line(line, label, number + i + 1) for i, line in enumerate(raw)]
            number += len(raw)
    finally:
        if source is not None:
            source.close()


@contextmanager
def output_sink(name: str):
    """A write(text) that flushes at once: stdout, or a temporary file renamed to --output at the end (so an
    interrupted run never leaves a truncated file under that name)."""
    if name == "-":
        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()
        yield write
        return
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    with temporary.open("w", encoding="utf-8") as handle:
        def write(text: str) -> None:
            handle.write(text)
            handle.flush()
        try:
            yield write
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise
    os.replace(temporary, path)


def formatted(results: list[list[tuple[str, Hypothesis | None, str]]], first: int, nbest: int,
              alignment: bool = False) -> str:
    if nbest == 1:
        return "".join(f"{row[0][0]} ||| {row[0][2]}\n" if alignment else f"{row[0][0]}\n" for row in results)
    lines = []
    for i, row in enumerate(results):
        for text, hyp, _ in row:
            log_prob, score = (hyp.log_prob, hyp.score) if hyp is not None else (0.0, 0.0)
            lines.append(f"{first + i} ||| {text} ||| F0= {log_prob:.6f} ||| {score:.6f}\n")
    return "".join(lines)


# --- The command ---

def parse_args(argv):
    parser = ArgumentParser(prog="seq2seq-translate", description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    model = " (default: the model directory's decoding setting, else {})"
    parser.add_argument("--model", required=True, type=Path, help="a model directory (config.json, model.safetensors, *.model)")
    parser.add_argument("--input", default="-", help="file of source lines (.gz too), or - for stdin (default: -)")
    parser.add_argument("--output", default="-", help="file for translations, written atomically, or - for stdout (default: -)")
    parser.add_argument("--beam-size", type=positive(int), help="hypotheses kept per sentence" + model.format(DEFAULTS["beam_size"]))
    parser.add_argument("--nbest", type=positive(int), default=1, help="hypotheses written per line, in the n-best "
                                                                     "format above when > 1 (default: 1)")
    parser.add_argument("--length-penalty", type=float, help="GNMT alpha" + model.format(DEFAULTS["alpha"]))
    parser.add_argument("--max-len-a", type=float, help="at most a * source length + b target tokens: a" +
                        model.format(DEFAULTS["max_len_a"]))
    parser.add_argument("--max-len-b", type=int, help="... and b" + model.format(DEFAULTS["max_len_b"]))
    parser.add_argument("--batch-size", type=positive(int), default=64, help="sentences per batch (default: 64)")
    parser.add_argument("--buffer-size", type=positive(int), help="lines read and translated at a time; a chunk is "
                        f"cut early when no more input is waiting (default: {BATCHES_PER_CHUNK} batches' worth, so that "
                        "every worker has batches and the lines are sorted by length over the chunk)")
    parser.add_argument("--shortlist", action=argparse.BooleanOptionalAction,
                        help="search each sentence over its lexical shortlist (default: when the model directory has "
                             "shortlist.safetensors); --no-shortlist searches the whole vocabulary")
    parser.add_argument("--alignment", action="store_true", help="append ' ||| ' and the argmax-attention alignment "
                        "to each line: s-t pairs of 0-based SentencePiece piece indices, source-target (Moses / "
                        "fast_align format); attention models, --nbest 1 (default: off)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto, CUDA when available)")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="decoding precision; auto: bf16 where "
                        "the hardware serves it, else fp32; bf16 or fp16 (CUDA) where served, else fp32 with a one-line "
                        "notice; bf16 on a CPU runs the large matrix products in bf16 and the rest in fp32 (default: auto)")
    parser.add_argument("--workers", type=positive(int), help="batches decoded at once in threads on a CPU (default: 2 "
                                                              "with 2+ threads, else 1; always 1 on CUDA)")
    parser.add_argument("--ref", type=Path, help="reference translations: print BLEU and chrF to stderr")
    parser.add_argument("--compare", type=Path, metavar="OTHER_HYP", help="with --ref: paired bootstrap resampling "
                        "(sacreBLEU's, 1,000 resamples) of this model's BLEU and chrF against OTHER_HYP's (default: none)")
    parser.add_argument("--results-json", type=Path, help="write the scores and decoding settings here (default: none)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (torch {torch.__version__})")
    return parser.parse_args(argv)


def decoding_options(args, payload: dict) -> dict:
    decoding = payload.get("decoding", {})
    given = {"beam_size": args.beam_size, "alpha": args.length_penalty, "max_len_a": args.max_len_a,
             "max_len_b": args.max_len_b}
    options = {key: value if value is not None else decoding.get(key, DEFAULTS[key]) for key, value in given.items()}
    if args.nbest > options["beam_size"]:
        raise UserError(f"--nbest {args.nbest} exceeds --beam-size {options['beam_size']}")
    return options


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = choose_device(args.device)
    model, src_tok, tgt_tok, payload = load_translator(args.model)
    dtype = choose_dtype(args.dtype, device, lambda line: print(f"seq2seq-translate: {line}", file=sys.stderr))
    model = prepare_for_search(model, device, dtype)  # bf16 on a CPU: the large products only (seq2seq.products)
    options = decoding_options(args, payload)
    if args.alignment and args.nbest > 1:
        raise UserError("--alignment writes one hypothesis per line: use it with --nbest 1")
    if args.alignment and not model.config.attention:
        raise UserError(f"--alignment: {args.model} has no attention to align with")
    if args.ref and not args.ref.is_file():
        raise UserError(f"--ref {args.ref}: no such file")
    if args.compare and not args.ref:
        raise UserError("--compare needs --ref: both systems are scored against the references")
    if args.compare and not args.compare.is_file():
        raise UserError(f"--compare {args.compare}: no such file")
    shortlist = None
    if args.shortlist is not False:
        shortlist = load_shortlist(args.model, len(src_tok), len(tgt_tok), (src_tok.fingerprint(), tgt_tok.fingerprint()))
    if args.shortlist and shortlist is None:
        raise UserError(f"--shortlist: {args.model} has no {SHORTLIST_NAME}")
    workers = args.workers or min(2, torch.get_num_threads())
    torch.set_grad_enabled(False)
    keep_freed_memory()  # every step allocates alike: reuse freed blocks instead of faulting fresh pages in (~5%)
    best: list[str] = []
    count, seconds = 0, 0.0  # seconds: in the search only (not loading, reading input or writing)
    with output_sink(args.output) as write:
        for lines in input_chunks(args.input, args.buffer_size or BATCHES_PER_CHUNK * args.batch_size):
            started = time.perf_counter()
            results = translate_lines(model, src_tok, tgt_tok, lines, batch_size=args.batch_size, nbest=args.nbest,
                                      shortlist=shortlist, workers=workers, alignment=args.alignment, **options)
            seconds += time.perf_counter() - started
            write(formatted(results, count, args.nbest, args.alignment))
            best.extend(row[0][0] for row in results)  # kept to score against --ref
            count += len(lines)
    report = {"sentences": count, "model": str(args.model), "src_lang": payload.get("src_lang"),
              "tgt_lang": payload.get("tgt_lang"), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
              "decoding": options | {"shortlist": shortlist is not None, "workers": workers},
              "speed": decoding_speed(count, seconds, dtype, device)}
    if args.ref:
        references = read_text_lines(args.ref)
        check_aligned(best, references, where=f"--ref {args.ref}")
        scores = corpus_scores(best, references)
        print(f"{scores['bleu_text']}\n{scores['bleu_signature']}\n{scores['chrf_text']}\n{scores['chrf_signature']}",
              file=sys.stderr)
        report |= {k: scores[k] for k in ("bleu", "chrf", "bleu_signature", "chrf_signature")}
        if args.compare:
            report["paired_bootstrap"] = compare(read_text_lines(args.compare), best, references, args.compare)
    if args.results_json:
        write_json(args.results_json, report)


def decoding_speed(sentences: int, seconds: float, dtype: torch.dtype, device: torch.device) -> dict:
    """Sentences per second of search, with the precision and the CPU it ran on (results.json's `speed` block;
    the GEMM-bound ceiling of a decode is `benchmarks/roofline.py --workloads decode`, too slow to time per run)."""
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    return {"units_per_sec": sentences / seconds if seconds > 0 else 0.0, "unit": "sentences", "seconds": seconds,
            "precision": precision, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": str(device)}


def compare(other: list[str], best: list[str], references: list[str], path: Path) -> dict:
    """Paired bootstrap of this model's translations against another system's, printed to stderr."""
    check_aligned(best, other, where=f"--compare {path}")
    result = paired_bootstrap(other, best, references)
    for name, row in result.items():
        mine, theirs = row["system"], row["baseline"]
        print(f"{name}: this model {mine['score']:.2f} (mean {mine['mean']:.2f} +- {mine['ci']:.2f}), {path} "
              f"{theirs['score']:.2f} (mean {theirs['mean']:.2f} +- {theirs['ci']:.2f}); paired bootstrap p = "
              f"{row['p_value']:.4f} ({row['signature']})", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
