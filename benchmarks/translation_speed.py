"""Training tokens/s of the demo translator and decoding speed on test_2016_flickr.

    python benchmarks/translation_speed.py [--model runs/wmt14_enfr-demo/model] [--train-steps 30]

Training: target tokens/s of the demo preset's model over real Multi30k batches (Adam, label smoothing,
clipping, as the recipe does). Decoding: seconds and sentences/s over the 1,000 test sentences at beam 1, 5
and 12, batched (64 sentences, sorted by length) versus one sentence at a time (first 100 sentences), each
over the whole vocabulary (exact) and over the model directory's lexical shortlist when it has one, with
1 and 2 worker threads, and the BLEU of each batched run. With --model, decoding uses that trained model
(a fresh model decodes to the length limit and is unrepresentative).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from seq2seq.clipping import clip_grad_norm
from seq2seq.data.batching import token_batches
from seq2seq.data.encoded import EncodedPairs
from seq2seq.data.parallel import read_parallel_text
from seq2seq.devices import keep_freed_memory
from seq2seq.metrics import corpus_scores
from seq2seq.presets import translation_demo
from seq2seq.shortlist import load_shortlist
from seq2seq.tokenizer import Tokenizer
from seq2seq.model_dir import load_translator
from seq2seq.translate import translate_lines
from seq2seq.translator import Translator


def training_speed(steps: int) -> None:
    preset = translation_demo()
    src_tok, tgt_tok = Tokenizer("tokenizers/multi30k/en.model"), Tokenizer("tokenizers/multi30k/fr.model")
    pairs = read_parallel_text("data/multi30k/train", "en", "fr")[:8000]
    corpus = EncodedPairs.from_rows(src_tok.encode([p[0] for p in pairs]), tgt_tok.encode([p[1] for p in pairs]))
    config = dataclasses.replace(preset.model, src_vocab_size=len(src_tok), tgt_vocab_size=len(tgt_tok))
    torch.manual_seed(0)
    model = Translator(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = token_batches(corpus.src_lengths(), corpus.tgt_lengths(), preset.training.max_tokens, seed=0)
    tokens, started = 0, None
    for i, indices in enumerate(batches[: steps + 3]):
        if i == 3:
            tokens, started = 0, time.perf_counter()
        batch = corpus.batch(indices)
        loss, count = model(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out, preset.training.label_smoothing)
        (loss / count).backward()
        clip_grad_norm(model.parameters(), preset.training.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(count)
    elapsed = time.perf_counter() - started
    print(f"training, demo model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{preset.training.max_tokens} tokens a batch): {tokens / elapsed:.0f} target tokens/s")


def decoding_speed(model_dir: str | None, beams: list[int], repeats: int) -> None:
    pairs = read_parallel_text("data/multi30k/test_2016_flickr", "en", "fr")
    lines, references = [p[0] for p in pairs], [p[1] for p in pairs]
    shortlist = None
    if model_dir:
        model, src_tok, tgt_tok, _ = load_translator(model_dir)
        shortlist = load_shortlist(model_dir, len(src_tok), len(tgt_tok))
    else:
        preset = translation_demo()
        src_tok, tgt_tok = Tokenizer("tokenizers/multi30k/en.model"), Tokenizer("tokenizers/multi30k/fr.model")
        config = dataclasses.replace(preset.model, src_vocab_size=len(src_tok), tgt_vocab_size=len(tgt_tok))
        model = Translator(config).eval()
    torch.set_grad_enabled(False)
    print(f"decoding test_2016_flickr ({len(lines)} sentences){'' if model_dir else ', untrained model'}, "
          f"the best of {repeats} runs:")
    searches = [("exact", None)] + ([("shortlist", shortlist)] if shortlist is not None else [])
    for beam in beams:
        options = dict(beam_size=beam, alpha=0.6, max_len_a=1.5, max_len_b=10)
        for name, vocabulary in searches:
            for workers in (1, 2):
                times, bleu = timed(model, src_tok, tgt_tok, lines, references, repeats, batch_size=64,
                                    shortlist=vocabulary, workers=workers, **options)
                seconds = times[0]
                print(f"  beam {beam:2d} {name:9s} {workers} worker(s): batched {seconds:6.2f} s "
                      f"({len(lines) / seconds:6.1f} sent/s; all runs {', '.join(f'{t:.2f}' for t in times)} s) "
                      f"BLEU {bleu:.2f}")
            started = time.perf_counter()
            translate_lines(model, src_tok, tgt_tok, lines[:100], batch_size=1, shortlist=vocabulary, **options)
            single = (time.perf_counter() - started) * len(lines) / 100
            print(f"  beam {beam:2d} {name:9s} one at a time {single:6.1f} s ({len(lines) / single:5.1f} sent/s, "
                  f"from 100 sentences) | batched with 2 workers is {single / seconds:4.1f}x faster")


def timed(model, src_tok, tgt_tok, lines, references, repeats, **options) -> tuple[list[float], float]:
    """Wall times of `repeats` runs of translate_lines, sorted, and the BLEU of the output."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        results = translate_lines(model, src_tok, tgt_tok, lines, **options)
        times.append(time.perf_counter() - started)
    return sorted(times), corpus_scores([r[0][0] for r in results], references)["bleu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a trained model directory for the decoding measurements")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 12])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (the best is reported)")
    args = parser.parse_args()
    keep_freed_memory()  # the allocator setting the recipes train in
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.train_steps:
        training_speed(args.train_steps)
    decoding_speed(args.model, args.beams, args.repeats)


if __name__ == "__main__":
    main()
