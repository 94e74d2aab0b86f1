"""`seq2seq-translate`: translate lines with a trained model directory, optionally scoring against a reference.

    seq2seq-translate --model runs/wmt14_enfr-demo/model < test.en > test.fr
    seq2seq-translate --model DIR --input test.en --ref test.fr --beam-size 5 --results-json scores.json

One line in, one line out, in order; an empty line gives an empty line. With --nbest N each input line
gives N lines `INDEX ||| HYPOTHESIS ||| SCORE` (Moses n-best style; INDEX counts input lines from 0,
SCORE is log P(y | x) / lp, best first). Reads only safetensors + JSON + SentencePiece files. When the
model directory has a lexical shortlist (shortlist.safetensors, seq2seq.shortlist), search uses it;
--no-shortlist searches the whole target vocabulary.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint import write_json
from .data.batching import token_batches
from .data.parallel import read_text_lines
from .errors import ArgumentParser, UserError, exits_cleanly, positive
from .metrics import check_aligned, corpus_scores
from .search import Hypothesis, beam_search
from .shortlist import SHORTLIST_NAME, Shortlist, load_shortlist
from .model_dir import load_translator
from .tokenizer import Tokenizer, to_tensor


def translate_lines(model, src_tok: Tokenizer, tgt_tok: Tokenizer, lines: list[str], *, beam_size: int, alpha: float,
                    max_len_a: float, max_len_b: int, batch_size: int, nbest: int = 1, shortlist: Shortlist | None = None,
                    workers: int = 1) -> list[list[tuple[str, float]]]:
    """(text, score) n-best lists for every line, in input order; an empty line gives nbest empty texts.

    workers > 1 decodes that many batches at once in threads, splitting torch's threads between them: at
    one decoding step the matrices are small, and two batches side by side keep two CPU cores busier
    than one batch on two (CTranslate2's inter_threads)."""
    ids = src_tok.encode(lines)
    results: list[list[tuple[str, float]]] = [[("", 0.0)] * nbest for _ in lines]
    todo = [i for i, line in enumerate(lines) if line.strip()]
    lengths = [len(ids[i]) + 1 for i in todo]
    batches = [[todo[j] for j in chunk]
               for chunk in token_batches(lengths, lengths, 10**9, max_sentences=batch_size, shuffle=False)]
    batches.sort(key=lambda rows: -sum(len(ids[i]) for i in rows))  # longest first: no long batch runs alone at the end

    def search(rows: list[int]) -> list[list[Hypothesis]]:
        src, src_lengths = to_tensor([ids[i] for i in rows], eos=True)
        return beam_search(model, src, src_lengths, beam_size, alpha, max_len_a, max_len_b, nbest=nbest,
                           shortlist=shortlist)

    with threads_split(workers) as pool:
        for rows, found in zip(batches, pool.map(search, batches) if pool else map(search, batches)):
            texts = iter(tgt_tok.decode([list(h.tokens) for hyps in found for h in hyps]))
            for i, hyps in zip(rows, found):
                results[i] = [(next(texts), h.score) for h in hyps]
    return results


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


def parse_args(argv):
    parser = ArgumentParser(prog="seq2seq-translate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="a model directory (config.json, model.safetensors, *.model)")
    parser.add_argument("--input", default="-", help="file of source lines, or - for stdin (default)")
    parser.add_argument("--output", default="-", help="file for translations, or - for stdout (default)")
    parser.add_argument("--beam-size", type=positive(int))
    parser.add_argument("--nbest", type=positive(int), default=1)
    parser.add_argument("--batch-size", type=positive(int), default=64, help="sentences per batch")
    parser.add_argument("--length-penalty", type=float, help="GNMT alpha")
    parser.add_argument("--max-len-a", type=float)
    parser.add_argument("--max-len-b", type=int)
    parser.add_argument("--shortlist", action=argparse.BooleanOptionalAction,
                        help="search each sentence over its lexical shortlist (default: when the model directory has "
                             "shortlist.safetensors); --no-shortlist searches the whole vocabulary")
    parser.add_argument("--workers", type=positive(int), help="batches decoded at once in threads (default: 2 on a "
                                                              "CPU with 2+ threads, else 1)")
    parser.add_argument("--ref", type=Path, help="reference translations: print BLEU and chrF to stderr")
    parser.add_argument("--results-json", type=Path)
    return parser.parse_args(argv)


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, src_tok, tgt_tok, payload = load_translator(args.model)
    decoding = payload.get("decoding", {})
    options = {key: value if value is not None else decoding.get(key, default) for key, value, default in (
        ("beam_size", args.beam_size, 5), ("alpha", args.length_penalty, 0.0),
        ("max_len_a", args.max_len_a, 1.5), ("max_len_b", args.max_len_b, 10))}
    if args.nbest > options["beam_size"]:
        raise UserError(f"--nbest {args.nbest} exceeds --beam-size {options['beam_size']}")
    lines = read_input(args.input)
    references = None
    if args.ref:
        if not args.ref.is_file():
            raise UserError(f"--ref {args.ref}: no such file")
        references = read_text_lines(args.ref)
        check_aligned(lines, references, where=f"--ref {args.ref}")
    shortlist = load_shortlist(args.model, len(src_tok), len(tgt_tok)) if args.shortlist is not False else None
    if args.shortlist and shortlist is None:
        raise UserError(f"--shortlist: {args.model} has no {SHORTLIST_NAME}")
    workers = args.workers or min(2, torch.get_num_threads())
    torch.set_grad_enabled(False)
    results = translate_lines(model, src_tok, tgt_tok, lines, batch_size=args.batch_size, nbest=args.nbest,
                              shortlist=shortlist, workers=workers, **options)
    write_output(args.output, results, args.nbest)
    report = {"sentences": len(lines), "decoding": options | {"shortlist": shortlist is not None, "workers": workers},
              "model": str(args.model), "src_lang": payload.get("src_lang"), "tgt_lang": payload.get("tgt_lang")}
    if references is not None:
        scores = corpus_scores([r[0][0] for r in results], references)
        print(f"{scores['bleu_text']}\n{scores['bleu_signature']}\n{scores['chrf_text']}\n{scores['chrf_signature']}",
              file=sys.stderr)
        report |= {k: scores[k] for k in ("bleu", "chrf", "bleu_signature", "chrf_signature")}
    if args.results_json:
        write_json(args.results_json, report)


def read_input(name: str) -> list[str]:
    if name == "-":
        return [line.rstrip("\r\n") for line in sys.stdin]
    path = Path(name)
    if not path.is_file():
        raise UserError(f"--input {path}: no such file")
    return read_text_lines(path)


def write_output(name: str, results, nbest: int) -> None:
    if nbest == 1:
        text = "".join(f"{r[0][0]}\n" for r in results)
    else:
        text = "".join(f"{i} ||| {hyp} ||| {score:.4f}\n" for i, r in enumerate(results) for hyp, score in r)
    if name == "-":
        sys.stdout.write(text)
    else:
        Path(name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
