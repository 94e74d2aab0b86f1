"""English -> French translation with a regularised encoder-decoder LSTM: Zaremba et al. (2014), Sec. 4.2,
on the model of Sutskever et al. (2014).

    accelerate launch recipes/wmt14_enfr.py                 # the paper preset on WMT'14 (needs the hub)
    accelerate launch recipes/wmt14_enfr.py --preset demo   # bundled Multi30k, offline, ~30 min on a CPU

Reads top to bottom like the paper: data -> vocabulary -> model -> optimiser and schedule -> training
with dev evaluation -> beam-search decoding of the test set -> scoring.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
import time
from pathlib import Path

import accelerate
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

import seq2seq
from seq2seq.checkpoint import atomic_write, load_weights, save_model, write_json
from seq2seq.data.batching import shard_evenly, token_batches
from seq2seq.data.encoded import EncodedPairs
from seq2seq.data.parallel import CleaningReport, clean_pairs, load_hf_pairs, read_parallel_text, take
from seq2seq.devices import use_cpu_cores
from seq2seq.errors import ArgumentParser, UserError, exits_cleanly, positive, probability
from seq2seq.metrics import corpus_scores
from seq2seq.plots import plot_curves
from seq2seq.presets import TRANSLATION_PRESETS, TranslationPreset
from seq2seq.schedule import halving_lr, linear_lr
from seq2seq.search import beam_search, greedy_search
from seq2seq.shortlist import SHORTLIST_NAME, Shortlist, build_shortlist
from seq2seq.tokenizer import Tokenizer, load_or_train
from seq2seq.training_state import (Checkpointer, Interruption, TrainingClock, check_finite, check_run, resume,
                                    save_or_stop)
from seq2seq.translator import Translator


SHORTLIST_PAIRS = 1_000_000  # training pairs that IBM Model 1 sees for the shortlist


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Train and evaluate the regularised LSTM translator (En->Fr).")
    parser.add_argument("--preset", choices=TRANSLATION_PRESETS, default="paper")
    parser.add_argument("--output-dir", type=Path, help="default: runs/wmt14_enfr-PRESET")
    parser.add_argument("--dataset", help="Hugging Face dataset id (overrides the preset's data)")
    parser.add_argument("--dataset-config", help="its configuration, e.g. fr-en")
    parser.add_argument("--data-files", nargs="+", help="local json/parquet files for --dataset json|parquet")
    parser.add_argument("--train-prefix", help="local PREFIX.en / PREFIX.fr training files")
    parser.add_argument("--valid-prefix")
    parser.add_argument("--test-prefix")
    parser.add_argument("--max-train-pairs", type=positive(int))
    parser.add_argument("--skip-invalid-utf8", action="store_true",
                        help="drop (and count) pairs with invalid UTF-8 instead of stopping at the first")
    parser.add_argument("--epochs", type=positive(float))
    parser.add_argument("--max-steps", type=positive(int), help="stop after this many updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--gradient-accumulation-steps", type=positive(int))
    parser.add_argument("--dropout", type=probability, help="override the preset's dropout probability")
    parser.add_argument("--checkpoint-every", type=positive(int), default=500, help="updates between checkpoints")
    parser.add_argument("--keep-checkpoints", type=positive(int), default=3)
    parser.add_argument("--resume", type=Path, help="a checkpoint dir (default: the output dir's latest, if any)")
    return parser.parse_args(argv)


ROOT = Path(__file__).resolve().parents[1]


def bundled(path: str | None) -> str | None:
    """A preset's relative paths (bundled data, tokenizers) are relative to the repository, not the CWD."""
    return None if path is None or Path(path).is_absolute() else str(ROOT / path)


def choose_preset(args: argparse.Namespace) -> TranslationPreset:
    preset = TRANSLATION_PRESETS[args.preset]()
    data, training = preset.data, preset.training
    data = dataclasses.replace(data, train_prefix=bundled(data.train_prefix), valid_prefix=bundled(data.valid_prefix),
                               test_prefix=bundled(data.test_prefix), tokenizer_dir=bundled(data.tokenizer_dir))
    if args.dataset or args.train_prefix:  # explicit data replaces the preset's source entirely
        data = dataclasses.replace(data, dataset=args.dataset, dataset_config=args.dataset_config,
                                   train_prefix=args.train_prefix, valid_prefix=args.valid_prefix,
                                   test_prefix=args.test_prefix, tokenizer_dir=None)  # new data, new vocabulary
    if args.max_train_pairs:
        data = dataclasses.replace(data, max_train_pairs=args.max_train_pairs)
    if args.epochs:
        training = dataclasses.replace(training, epochs=args.epochs)
    if args.gradient_accumulation_steps:
        training = dataclasses.replace(training, gradient_accumulation_steps=args.gradient_accumulation_steps)
    model = preset.model if args.dropout is None else dataclasses.replace(preset.model, dropout=args.dropout)
    return dataclasses.replace(preset, model=model, data=data, training=training)


# --- Data: cleaned pairs from the hub (streamed) or local files ---

def load_split(data, split: str, args, report: CleaningReport) -> list[tuple[str, str]]:
    prefix = {"train": data.train_prefix, "valid": data.valid_prefix, "test": data.test_prefix}[split]
    if prefix:
        return read_parallel_text(prefix, data.src_lang, data.tgt_lang, args.skip_invalid_utf8, report)
    if not data.dataset:
        raise UserError(f"no {split} data: give --{split}-prefix or --dataset")
    hf_split = {"train": "train", "valid": "validation", "test": "test"}[split]
    try:
        pairs = load_hf_pairs(data.dataset, data.dataset_config, hf_split, data.src_lang, data.tgt_lang,
                              data_files=args.data_files)
        return take(pairs, data.max_train_pairs if split == "train" else None)
    except UserError as error:
        raise UserError(f"{error}; without network access, run `--preset demo` (bundled Multi30k)") from None


def load_data(data, args, accelerator) -> dict[str, list[tuple[str, str]]]:
    reports = {split: CleaningReport() for split in ("train", "valid", "test")}
    splits = {split: load_split(data, split, args, reports[split]) for split in reports}
    report = reports["train"]
    splits["train"] = take(clean_pairs(splits["train"], data.max_words, data.max_ratio, report), data.max_train_pairs)
    skipped = "".join(f", {reports[s].invalid_utf8} {s} pairs skipped (invalid UTF-8)"
                      for s in ("valid", "test") if reports[s].invalid_utf8)
    accelerator.print(f"train: {report}; valid {len(splits['valid'])}, test {len(splits['test'])} pairs{skipped}")
    if not splits["train"]:
        raise UserError(f"no training pairs are left after cleaning ({report})")
    for split in ("valid", "test"):
        if not splits[split]:
            raise UserError(f"the {split} split is empty")
    return splits


# --- Vocabulary: SentencePiece per language (or one joint model), on a bounded sample, reused when present ---

def tokenizers(data, train, output_dir: Path) -> tuple[Tokenizer, Tokenizer]:
    directory = Path(data.tokenizer_dir) if data.tokenizer_dir else output_dir / "tokenizers"
    if data.joint_vocabulary:
        joint = load_or_train(directory / "joint.model", lambda: [side for pair in train for side in pair],
                              data.vocab_size, data.spm_model_type, data.spm_sample)
        return joint, joint
    return tuple(
        load_or_train(directory / f"{lang}.model", lambda i=i: [pair[i] for pair in train], data.vocab_size,
                      data.spm_model_type, data.spm_sample)
        for i, lang in enumerate((data.src_lang, data.tgt_lang)))


def encode(pairs, src_tok: Tokenizer, tgt_tok: Tokenizer) -> EncodedPairs:
    return EncodedPairs.from_rows(src_tok.encode([p[0] for p in pairs]), tgt_tok.encode([p[1] for p in pairs]))


def lexical_shortlist(decoding, corpus: EncodedPairs, toks, output_dir: Path, accelerator) -> Shortlist | None:
    """Each test sentence's search vocabulary (seq2seq.shortlist), from IBM Model 1 on the training pairs
    (the first SHORTLIST_PAIRS); built by the main process, read by the others; None when the preset
    searches the whole vocabulary."""
    if not decoding.shortlist_per_source:
        return None
    path = output_dir / SHORTLIST_NAME
    if path.is_file():
        return Shortlist.load(path, len(toks[0]), len(toks[1]))
    rows = range(min(len(corpus), SHORTLIST_PAIRS))
    shortlist = build_shortlist([corpus.row(corpus.src, corpus.src_offsets, i) for i in rows],
                                [corpus.row(corpus.tgt, corpus.tgt_offsets, i) for i in rows], len(toks[0]),
                                len(toks[1]), decoding.shortlist_per_source, decoding.shortlist_frequent)
    if accelerator.is_main_process:
        shortlist.save(path)
    return shortlist


# --- Optimiser and schedule ---

def make_optimizer(model, training):
    if training.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=training.lr)
    return torch.optim.Adam(model.parameters(), lr=training.lr)


def learning_rate(training, step: int, epoch_progress: float, total_steps: int) -> float:
    if training.schedule == "halving":
        return halving_lr(epoch_progress, training.lr, training.halve_from)
    if training.schedule == "linear":
        return linear_lr(step, training.lr, training.warmup_steps, total_steps)
    return training.lr


# --- Evaluation: dev perplexity, greedy dev BLEU, beam-search test BLEU ---

@torch.no_grad()
def perplexity(model, corpus: EncodedPairs, accelerator, max_tokens: int) -> float:
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    batches = token_batches(corpus.src_lengths(), corpus.tgt_lengths(), max_tokens, shuffle=False)
    for indices in batches[accelerator.process_index :: accelerator.num_processes]:
        batch = corpus.batch(indices).to(accelerator.device)
        loss, count = model(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out)
        totals += torch.stack([loss.double(), count.double()])
    totals = accelerator.reduce(totals, "sum")
    model.train()
    return math.exp(totals[0].item() / totals[1].item())


@torch.no_grad()
def translate(model, corpus: EncodedPairs, tgt_tok: Tokenizer, decoding, accelerator, beam: bool,
              shortlist: Shortlist | None = None) -> list[str]:
    """Detokenised hypotheses for every pair, in corpus order, gathered from all processes."""
    model.eval()
    batches = token_batches(corpus.src_lengths(), corpus.src_lengths(), 10**9, max_sentences=decoding.batch_size,
                            shuffle=False)
    mine = batches[accelerator.process_index :: accelerator.num_processes]
    index, hypotheses = [], []
    for indices in mine:
        batch = corpus.batch(indices).to(accelerator.device)
        if beam:
            found = beam_search(model, batch.src, batch.src_lengths, decoding.beam_size, decoding.alpha,
                                decoding.max_len_a, decoding.max_len_b, shortlist=shortlist)
            tokens = [n[0].tokens for n in found]
        else:
            tokens = [h.tokens for h in greedy_search(model, batch.src, batch.src_lengths, decoding.max_len_a,
                                                      decoding.max_len_b)]
        index.extend(indices)
        hypotheses.extend(tgt_tok.decode([list(t) for t in tokens]))
    gathered = accelerate.utils.gather_object(list(zip(index, hypotheses)))
    model.train()
    return [text for _, text in sorted(dict(gathered).items())]


def evaluate(model, splits, encoded, tgt_tok, preset, accelerator, beam: bool, split="valid",
             shortlist: Shortlist | None = None) -> tuple[dict, list[str]]:
    """Scores (BLEU, chrF, signatures, perplexity) of a split and its hypotheses in corpus order."""
    unwrapped = accelerator.unwrap_model(model)
    hypotheses = translate(unwrapped, encoded[split], tgt_tok, preset.decoding, accelerator, beam, shortlist)
    scores = corpus_scores(hypotheses, [pair[1] for pair in splits[split]])
    scores["ppl"] = perplexity(model, encoded[split], accelerator, preset.training.max_tokens)
    return scores, hypotheses


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    preset = choose_preset(args)
    output_dir = args.output_dir or Path("runs") / f"wmt14_enfr-{preset.name}"
    training = preset.training
    accelerator = Accelerator(mixed_precision=args.mixed_precision, project_dir=output_dir,
                              gradient_accumulation_steps=training.gradient_accumulation_steps,
                              log_with="tensorboard" if tensorboard_available() else None)
    set_seed(args.seed, device_specific=True)
    use_cpu_cores(accelerator)
    started = time.time()

    # Data and vocabulary.
    splits = load_data(preset.data, args, accelerator)
    with accelerator.main_process_first():  # the main process trains the SentencePiece models, the others read them
        src_tok, tgt_tok = tokenizers(preset.data, splits["train"], output_dir)
    encoded = {split: encode(pairs, src_tok, tgt_tok) for split, pairs in splits.items()}
    with accelerator.main_process_first():
        shortlist = lexical_shortlist(preset.decoding, encoded["train"], (src_tok, tgt_tok), output_dir, accelerator)

    # Model: the encoder-decoder LSTM, every parameter from U(-init_scale, init_scale).
    config = dataclasses.replace(preset.model, src_vocab_size=len(src_tok), tgt_vocab_size=len(tgt_tok))
    preset = dataclasses.replace(preset, model=config)
    model = Translator(config)
    accelerator.print(f"{preset.name}: {config}\n{training}\n"
                      f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}")
    optimizer = make_optimizer(model, training)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.init_trackers("wmt14_enfr", config={k: str(v) for k, v in dataclasses.asdict(preset).items()})
    check_run(output_dir, {"preset": dataclasses.asdict(preset), "seed": args.seed,
                           "tokenizers": [src_tok.fingerprint(), tgt_tok.fingerprint()]}, accelerator)

    # Training.
    train_state = train(model, optimizer, encoded, splits, (src_tok, tgt_tok), preset, args, accelerator, output_dir)

    # Decoding and scoring: the best model by dev BLEU, beam search (over the shortlist, if any) on the test set.
    best_dir = output_dir / "model"
    if accelerator.is_main_process:
        if not (best_dir / "model.safetensors").is_file():
            save_translator(best_dir, accelerator.unwrap_model(model), preset, src_tok, tgt_tok)
        if shortlist is not None:
            shortlist.save(best_dir / SHORTLIST_NAME)
    accelerator.wait_for_everyone()
    load_weights(best_dir, accelerator.unwrap_model(model))
    test, hypotheses = evaluate(model, splits, encoded, tgt_tok, preset, accelerator, beam=True, split="test",
                                shortlist=shortlist)
    wall_time = time.time() - started
    accelerator.print(f"test BLEU {test['bleu']:.2f}  chrF {test['chrf']:.2f}  (beam {preset.decoding.beam_size})\n"
                      f"{test['bleu_signature']}\n{test['chrf_signature']}\n{wall_time:.0f} s")
    results = {
        "bleu": test["bleu"], "chrf": test["chrf"], "bleu_signature": test["bleu_signature"],
        "chrf_signature": test["chrf_signature"], "test_ppl": test["ppl"], "dev": train_state["dev"],
        "best_dev_bleu": train_state["best_bleu"], "steps": train_state["step"],
        "train_time_s": train_state["train_time"], "wall_time_s": wall_time,
        "config": dataclasses.asdict(preset), "seed": args.seed, "mixed_precision": args.mixed_precision,
        "num_processes": accelerator.num_processes, "command": " ".join(sys.argv),
        "versions": {"seq2seq": seq2seq.__version__, "torch": torch.__version__,
                     "accelerate": accelerate.__version__, "python": platform.python_version()},
    }
    if accelerator.is_main_process:
        write_json(output_dir / "results.json", results)
        (output_dir / "test.hyp").write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
        plot_dev_curves(output_dir / "curves.png", train_state["dev"], results)
    accelerator.end_training()
    return results


def train(model, optimizer, encoded, splits, toks, preset, args, accelerator, output_dir) -> dict:
    """The update loop, resumable mid-epoch: state holds the step, the position in the epoch's seeded
    batch order, the dev history and the best score; checkpoints every --checkpoint-every updates and
    at each epoch end; SIGTERM / Ctrl-C saves one and stops."""
    training, corpus = preset.training, encoded["train"]
    src_lengths, tgt_lengths = corpus.src_lengths(), corpus.tgt_lengths()
    per_epoch = math.ceil(len(token_batches(src_lengths, tgt_lengths, training.max_tokens,
                                            max_sentences=training.max_sentences)) / accelerator.num_processes)
    total = min(int(per_epoch * training.epochs / training.gradient_accumulation_steps), args.max_steps or 10**12)
    checkpointer = Checkpointer(output_dir, accelerator, args.keep_checkpoints)
    fresh = {"step": 0, "epoch": 0, "position": 0, "dev": [], "best_bleu": -1.0, "tokens": 0, "train_time": 0.0}
    state, _ = resume(checkpointer, args.resume, model, optimizer, fresh)
    progress = tqdm(total=total, initial=state["step"], disable=not accelerator.is_main_process, unit="step",
                    mininterval=2.0)
    clock = TrainingClock(state)

    def save() -> Path:
        """A checkpoint of the current state, its time not counted as training time."""
        with clock.paused():
            return checkpointer.save(model, optimizer, state)

    with progress, Interruption(accelerator) as interruption:
        while state["step"] < total:
            batches = token_batches(src_lengths, tgt_lengths, training.max_tokens, max_sentences=training.max_sentences,
                                    seed=args.seed, epoch=state["epoch"])
            mine = shard_evenly(batches, accelerator.num_processes, accelerator.process_index)
            while state["position"] < len(mine) and state["step"] < total:
                batch = corpus.batch(mine[state["position"]]).to(accelerator.device)
                state["position"] += 1
                lr = learning_rate(training, state["step"], state["epoch"] + state["position"] / len(mine), total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with accelerator.accumulate(model):
                    loss = train_step(model, optimizer, batch, training, accelerator, state["step"] + 1, checkpointer)
                state["tokens"] += int((batch.tgt_out != 0).sum()) * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                state["step"] += 1
                progress.update(1)
                tokens_per_second = state["tokens"] / clock.seconds()
                progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", tok_s=f"{tokens_per_second:.0f}", refresh=False)
                accelerator.log({"train/loss": loss, "train/lr": lr}, step=state["step"])
                if state["step"] % training.eval_every == 0 or state["step"] == total:
                    with clock.paused():
                        dev_checkpoint(model, splits, encoded, toks, preset, accelerator, output_dir, state,
                                       state["epoch"] + state["position"] / len(mine))
                save_or_stop(interruption, state["step"], args.checkpoint_every, save)
            if state["position"] >= len(mine):  # epoch end: the next one starts from its own seeded order
                state["epoch"], state["position"] = state["epoch"] + 1, 0
                if accelerator.sync_gradients:
                    save()
    clock.stop()
    if not state["dev"] or state["dev"][-1]["step"] != state["step"]:  # the final model is always scored
        dev_checkpoint(model, splits, encoded, toks, preset, accelerator, output_dir, state, state["epoch"])
    latest = checkpointer.latest()
    if latest is None or not latest.name.endswith(f"{state['step']:09d}"):  # the final state, for the record
        checkpointer.save(model, optimizer, state)
    progress.close()
    return state


def train_step(model, optimizer, batch, training, accelerator, step: int, checkpointer) -> float:
    loss, count = model(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out, training.label_smoothing)
    normalizer = count if training.normalize_by == "tokens" else batch.src.shape[1]
    loss = loss / normalizer
    check_finite(loss, step, accelerator, checkpointer)
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def dev_checkpoint(model, splits, encoded, toks, preset, accelerator, output_dir, state, epoch: float) -> None:
    """Dev perplexity and greedy BLEU; the best model by dev BLEU is kept in OUTPUT/model."""
    scores, _ = evaluate(model, splits, encoded, toks[1], preset, accelerator, beam=False)
    row = {"step": state["step"], "epoch": epoch, "ppl": scores["ppl"], "bleu": scores["bleu"],
           "chrf": scores["chrf"], "train_tokens_per_sec": state["tokens"] / max(state["train_time"], 1e-9)}
    state["dev"].append(row)
    accelerator.log({"dev/ppl": row["ppl"], "dev/bleu": row["bleu"], "dev/chrf": row["chrf"]}, step=state["step"])
    improved = scores["bleu"] > state["best_bleu"]
    if improved:
        state["best_bleu"] = scores["bleu"]
        if accelerator.is_main_process:
            save_translator(output_dir / "model", accelerator.unwrap_model(model), preset, *toks)
    if accelerator.is_main_process:
        tqdm.write(f"step {row['step']:6d} | epoch {row['epoch']:.2f} | dev ppl {row['ppl']:.2f} | dev BLEU "
                   f"{row['bleu']:.2f} (greedy){' *' if improved else ''} | {row['train_tokens_per_sec']:.0f} tok/s")


def save_translator(directory: Path, model, preset, src_tok: Tokenizer, tgt_tok: Tokenizer) -> None:
    """OUTPUT/model: config.json, model.safetensors and the two SentencePiece models."""
    for name, tok in (("source.model", src_tok), ("target.model", tgt_tok)):
        atomic_write(directory / name, lambda temporary, tok=tok: Path(temporary).write_bytes(tok.path.read_bytes()))
    save_model(directory, model, preset.model, extra={
        "decoding": dataclasses.asdict(preset.decoding), "src_lang": preset.data.src_lang,
        "tgt_lang": preset.data.tgt_lang, "source_tokenizer": "source.model", "target_tokenizer": "target.model",
        "source_fingerprint": src_tok.fingerprint(), "target_fingerprint": tgt_tok.fingerprint()})


def plot_dev_curves(path: Path, dev: list[dict], results: dict) -> None:
    if not dev:
        return
    steps = [row["step"] for row in dev]
    plot_curves(path, steps, {"dev BLEU (greedy)": [r["bleu"] for r in dev], "dev chrF": [r["chrf"] for r in dev],
                              "dev ppl": [r["ppl"] for r in dev]},
                xlabel="update", ylabel="score", title=f"test BLEU {results['bleu']:.1f} / chrF {results['chrf']:.1f} (beam)")


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
