"""Translation with a regularised encoder-decoder LSTM: Zaremba et al. (2014), Sec. 4.2, on the model of
Sutskever et al. (2014). English -> French by default; any pair with --src-lang / --tgt-lang.

    accelerate launch recipes/wmt14_enfr.py                 # the paper preset on WMT'14 (needs the hub)
    accelerate launch recipes/wmt14_enfr.py --preset demo   # bundled Multi30k, offline, ~10 min on 2 CPU cores
    python recipes/wmt14_enfr.py --preset paper --prepare-only --output-dir runs/paper   # the data stage alone

Reads top to bottom like the paper: data and vocabulary (prepared once into memory-mapped arrays,
seq2seq.data.prepared) -> model -> optimiser and schedule -> training with dev evaluation -> beam-search
decoding of the test set -> scoring.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from seq2seq import gemm
from seq2seq.average import average
from seq2seq.checkpoint import atomic_write, load_weights, write_json
from seq2seq.config import add_config_flags, configure
from seq2seq.data.batching import shard_evenly, token_batches
from seq2seq.data.options import add_data_flags, data_from_flags
from seq2seq.data.prepared import PreparedCorpus, prepare
from seq2seq.devices import training_precision, use_cpu_cores
from seq2seq.errors import ArgumentParser, exits_cleanly, positive, probability
from seq2seq.evaluation import evaluate
from seq2seq.model_dir import save_translator
from seq2seq.plots import plot_curves
from seq2seq.presets import TRANSLATION_PRESETS, TranslationPreset
from seq2seq.roofline import speed_record, translator_step
from seq2seq.schedule import halving_lr, linear_lr
from seq2seq.shortlist import SHORTLIST_NAME
from seq2seq.training_state import (Checkpointer, Progress, add_run_flags, check_finite, check_run, clip_gradients,
                                    load_best, provenance, start_training)
from seq2seq.translator import Translator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Train and evaluate the regularised LSTM translator.")
    add_config_flags(parser, TRANSLATION_PRESETS, default="paper")
    parser.add_argument("--output-dir", type=Path, help="default: runs/wmt14_enfr-PRESET")
    parser.add_argument("--prepared", type=Path, help="prepared corpus directory, made when absent and reused when "
                                                      "its settings match (default: OUTPUT/prepared)")
    parser.add_argument("--prepare-only", action="store_true", help="prepare the corpus and stop")
    add_data_flags(parser)
    parser.add_argument("--epochs", type=positive(float), help="shorthand for --set training.epochs=E")
    parser.add_argument("--gradient-accumulation-steps", type=positive(int), metavar="K",
                        help="shorthand for --set training.gradient_accumulation_steps=K")
    parser.add_argument("--eval-every", type=positive(int), help="shorthand for --set training.eval_every=N")
    parser.add_argument("--dropout", type=probability, help="shorthand for --set model.dropout=P")
    add_run_flags(parser, checkpoint_every=500, precisions=("no", "bf16", "fp16"))
    parser.add_argument("--average-last", type=positive(int), metavar="K", help="also score the mean of the last K "
                        "checkpoints, written to OUTPUT/averaged (seq2seq-average); needs --keep-checkpoints >= K")
    args = parser.parse_args(argv)
    if args.average_last and args.average_last > args.keep_checkpoints:
        parser.error(f"--average-last {args.average_last} needs --keep-checkpoints >= {args.average_last}")
    return args


def choose_preset(args: argparse.Namespace) -> TranslationPreset | None:
    """Preset, --config file, the shorthand flags, --set; then the data flags (seq2seq.data.options)."""
    shorthands = {"--epochs": ("training.epochs", args.epochs), "--eval-every": ("training.eval_every", args.eval_every),
                  "--dropout": ("model.dropout", args.dropout), "--gradient-accumulation-steps":
                  ("training.gradient_accumulation_steps", args.gradient_accumulation_steps)}
    return configure(args, TRANSLATION_PRESETS, shorthands,
                     then=lambda preset: dataclasses.replace(preset, data=data_from_flags(preset.data, args)))


# --- Data and vocabulary: cleaned, SentencePiece-encoded, memory-mapped; prepared once for all processes ---

def prepared_corpus(preset, args, output_dir: Path, accelerator) -> PreparedCorpus:
    directory = args.prepared or output_dir / "prepared"
    with accelerator.main_process_first():  # the main process prepares; the others then map its files
        corpus = prepare(preset.data, preset.decoding, directory, skip_invalid_utf8=args.skip_invalid_utf8,
                         explicit=args.prepared is not None, log=accelerator.print)
    if not accelerator.is_main_process:
        print(f"process {accelerator.process_index}: mapped {directory} (prepared by the main process)", flush=True)
    cleaning = corpus.manifest["cleaning"]
    skipped = "".join(f", {cleaning[s]['invalid_utf8']} {s} pairs skipped (invalid UTF-8)"
                      for s in ("valid", "test") if cleaning[s]["invalid_utf8"])
    accelerator.print(f"train: {len(corpus.splits['train']):,} pairs; valid {len(corpus.splits['valid'])}, "
                      f"test {len(corpus.splits['test'])} pairs{skipped} ({preset.data.src_lang}->{preset.data.tgt_lang})")
    return corpus


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


# --- Training ---

@dataclass
class MTProgress(Progress):
    """Progress plus the target tokens trained on (all processes) and when the first update came (s after launch)."""

    tokens: int = 0
    first_update_s: float | None = None


def train(model, optimizer, corpus: PreparedCorpus, preset, args, accelerator, output_dir) -> dict:
    """The update loop, resumable mid-epoch: state holds the step, the position in the epoch's seeded
    batch order, the dev history and the best score; checkpoints every --checkpoint-every updates and
    at each epoch end; SIGTERM / Ctrl-C saves one and stops. Batches are read from the mapped arrays."""
    training, pairs = preset.training, corpus.splits["train"]
    src_lengths, tgt_lengths = pairs.src_lengths(), pairs.tgt_lengths()
    per_epoch = math.ceil(len(token_batches(src_lengths, tgt_lengths, training.max_tokens,
                                            max_sentences=training.max_sentences)) / accelerator.num_processes)
    total = min(int(per_epoch * training.epochs / training.gradient_accumulation_steps), args.max_steps or 10**12)
    session, first_update = start_training(model, optimizer, accelerator, output_dir, args, MTProgress(), total), None
    state = session.state
    with session:
        while state.step < total:
            batches = token_batches(src_lengths, tgt_lengths, training.max_tokens, max_sentences=training.max_sentences,
                                    seed=args.seed, epoch=state.epoch)
            mine = shard_evenly(batches, accelerator.num_processes, accelerator.process_index)
            while state.position < len(mine) and state.step < total:
                batch = pairs.batch(mine[state.position]).to(accelerator.device)
                state.position += 1
                lr = learning_rate(training, state.step, state.epoch + state.position / len(mine), total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with accelerator.accumulate(model):
                    loss = train_step(model, optimizer, batch, training, accelerator, state.step + 1,
                                      session.checkpointer)
                state.tokens += int((batch.tgt_out != 0).sum()) * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                if first_update is None:
                    first_update = time.time() - psutil.Process().create_time()
                    accelerator.print(f"first update {first_update:.1f} s after launch")
                session.advance(loss=f"{loss:.3f}", lr=f"{lr:.3g}",
                                tok_s=f"{state.tokens / session.clock.seconds():.0f}")
                accelerator.log({"train/loss": loss, "train/lr": lr}, step=state.step)
                if state.step % training.eval_every == 0 or state.step == total:
                    with session.clock.paused():
                        dev_checkpoint(model, corpus, preset, accelerator, output_dir, session,
                                       state.epoch + state.position / len(mine))
                session.checkpoint_if_due()
            if state.position >= len(mine):  # epoch end: the next one starts from its own seeded order
                state.epoch, state.position = state.epoch + 1, 0
                if accelerator.sync_gradients:
                    session.save()
    session.clock.stop()
    if not state.history or state.history[-1]["step"] != state.step:  # the final model is always scored
        dev_checkpoint(model, corpus, preset, accelerator, output_dir, session, state.epoch)
    latest = session.checkpointer.latest()
    if latest is None or not latest.name.endswith(f"{state.step:09d}"):  # the final state, for the record
        session.checkpointer.save(model, optimizer, state)
    state.first_update_s = first_update
    return state


def train_step(model, optimizer, batch, training, accelerator, step: int, checkpointer) -> float:
    loss, count = model(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out, training.label_smoothing)
    loss = loss / (count if training.normalize_by == "tokens" else batch.src.shape[1])
    check_finite(loss, step, accelerator, checkpointer)
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        clip_gradients(model, training.max_grad_norm, step, accelerator, checkpointer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def dev_checkpoint(model, corpus, preset, accelerator, output_dir, session, epoch: float) -> None:
    """Dev perplexity and greedy BLEU; the best model by dev BLEU is kept in OUTPUT/model."""
    state = session.state
    scores, _ = evaluate(model, corpus, preset, accelerator, beam=False, split="valid")
    row = {"step": state.step, "epoch": epoch, "ppl": scores["ppl"], "bleu": scores["bleu"],
           "chrf": scores["chrf"], "train_tokens_per_sec": state.tokens / max(state.train_time, 1e-9)}
    state.history.append(row)
    accelerator.log({"dev/ppl": row["ppl"], "dev/bleu": row["bleu"], "dev/chrf": row["chrf"]}, step=state.step)
    improved = session.keep_if_best(scores["bleu"], lambda: save_translator(
        output_dir / "model", accelerator.unwrap_model(model), preset, corpus.src_tok, corpus.tgt_tok))
    session.write(f"step {row['step']:6d} | epoch {row['epoch']:.2f} | dev ppl {row['ppl']:.2f} | dev BLEU "
                  f"{row['bleu']:.2f} (greedy){' *' if improved else ''} | {row['train_tokens_per_sec']:.0f} tok/s")


# --- The experiment ---

@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    preset = choose_preset(args)
    if preset is None:  # --print-config
        return None
    output_dir = args.output_dir or Path("runs") / f"wmt14_enfr-{preset.name}"
    args.mixed_precision = training_precision(args.mixed_precision)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, project_dir=output_dir,
                              gradient_accumulation_steps=preset.training.gradient_accumulation_steps,
                              log_with="tensorboard" if importlib.util.find_spec("tensorboard") else None)
    set_seed(args.seed, device_specific=True)
    use_cpu_cores(accelerator)
    started = time.time()
    gemm.announce(accelerator.print, accelerator.device, args.mixed_precision)

    corpus = prepared_corpus(preset, args, output_dir, accelerator)
    if args.prepare_only:
        return corpus.manifest

    # Model: the encoder-decoder LSTM, every parameter from U(-init_scale, init_scale).
    config = dataclasses.replace(preset.model, src_vocab_size=len(corpus.src_tok), tgt_vocab_size=len(corpus.tgt_tok))
    preset = dataclasses.replace(preset, model=config)
    model = Translator(config)
    accelerator.print(f"{preset.name}: {config}\n{preset.training}\n{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
                      f"parameters, {accelerator.num_processes} process(es) on {accelerator.device}")
    optimizer = make_optimizer(model, preset.training)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.init_trackers("wmt14_enfr", config={k: str(v) for k, v in dataclasses.asdict(preset).items()})
    check_run(output_dir, {"preset": dataclasses.asdict(preset), "seed": args.seed,
                           "tokenizers": [corpus.src_tok.fingerprint(), corpus.tgt_tok.fingerprint()]},
              accelerator, args.overwrite, preset)

    state = train(model, optimizer, corpus, preset, args, accelerator, output_dir)

    # Decoding and scoring: the best model by dev BLEU, beam search (over the shortlist, if any) on the test set.
    best_dir = output_dir / "model"
    if accelerator.is_main_process and corpus.shortlist is not None:
        corpus.shortlist.save(best_dir / SHORTLIST_NAME)
    load_best(best_dir, model, accelerator, lambda: save_translator(best_dir, accelerator.unwrap_model(model), preset,
                                                                   corpus.src_tok, corpus.tgt_tok))
    test, hypotheses = evaluate(model, corpus, preset, accelerator, beam=True, split="test")
    wall_time = time.time() - started
    accelerator.print(f"test BLEU {test['bleu']:.2f}  chrF {test['chrf']:.2f}  (beam {preset.decoding.beam_size})\n"
                      f"{test['bleu_signature']}\n{test['chrf_signature']}\n{wall_time:.0f} s")
    results = {
        "bleu": test["bleu"], "chrf": test["chrf"], "bleu_signature": test["bleu_signature"],
        "chrf_signature": test["chrf_signature"], "test_ppl": test["ppl"], "dev": state.history,
        "best_dev_bleu": state.best, "steps": state.step, "train_time_s": state.train_time,
        "first_update_s": state.first_update_s, "wall_time_s": wall_time,
        "speed": speed(state, corpus.splits["train"], preset, args, accelerator),
        "src_lang": preset.data.src_lang, "tgt_lang": preset.data.tgt_lang, "prepared": str(corpus.directory),
        "config": dataclasses.asdict(preset), **provenance(args, accelerator),
    }
    if args.average_last:  # the mean of the last K checkpoints, scored the same way
        results["averaged"] = score_average(model, corpus, preset, args, accelerator, output_dir)
    if accelerator.is_main_process:
        write_json(output_dir / "results.json", results)
        atomic_write(output_dir / "test.hyp",
                     lambda temporary: Path(temporary).write_text("\n".join(hypotheses) + "\n", encoding="utf-8"))
        plot_curves(output_dir / "curves.png", [r["step"] for r in state.history],
                    {"dev BLEU (greedy)": [r["bleu"] for r in state.history], "dev chrF": [r["chrf"] for r in state.history],
                     "dev ppl": [r["ppl"] for r in state.history]}, xlabel="update", ylabel="score",
                    title=f"test BLEU {results['bleu']:.1f} / chrF {results['chrf']:.1f} (beam)")
    accelerator.end_training()
    return results


def speed(state: MTProgress, pairs, preset: TranslationPreset, args, accelerator) -> dict:
    """Training target tokens/s against the GEMM-bound ceiling of the epoch's mean batch (sentences, padded source
    and target lengths, target tokens; seq2seq.roofline)."""
    training, c = preset.training, preset.model
    src, tgt = pairs.src_lengths() + 1, pairs.tgt_lengths() + 1  # with </s>
    plan = token_batches(src - 1, tgt - 1, training.max_tokens, max_sentences=training.max_sentences, seed=args.seed)
    mean = [sum(f(b) for b in plan) / len(plan) for f in (len, lambda b: src[b].max(), lambda b: tgt[b].max(),
                                                           lambda b: tgt[b].sum())]
    products = translator_step(round(mean[0]), round(mean[1]), round(mean[2]), c.embedding_size, c.hidden_size,
                               c.num_layers, c.tgt_vocab_size, c.attention, c.bidirectional_encoder)
    return speed_record(state.tokens / max(state.train_time, 1e-9), mean[3], products, args.mixed_precision,
                        accelerator.device.type)


def score_average(model, corpus, preset, args, accelerator, output_dir: Path) -> dict:
    checkpoints = Checkpointer(output_dir, accelerator).complete()[-args.average_last :]
    if accelerator.is_main_process:
        average(checkpoints, output_dir / "averaged", config_from=output_dir / "model")
    accelerator.wait_for_everyone()
    load_weights(output_dir / "averaged", accelerator.unwrap_model(model))
    scores, _ = evaluate(model, corpus, preset, accelerator, beam=True, split="test")
    accelerator.print(f"mean of the last {len(checkpoints)} checkpoints: test BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}")
    return {"bleu": scores["bleu"], "chrf": scores["chrf"], "checkpoints": [path.name for path in checkpoints]}


if __name__ == "__main__":
    main()
