"""Penn Treebank word-level language modelling: Zaremba, Sutskever & Vinyals (2014), Sec. 4.1.

    python recipes/ptb_lm.py --preset small --data-dir $PTB --output-dir runs/ptb-small
    accelerate launch recipes/ptb_lm.py --preset medium --data-dir $PTB --output-dir runs/ptb-medium
    python recipes/ptb_lm.py --preset small --set training.lr=0.5 --print-config   # configure without editing code

Reads top to bottom like the paper: data -> vocabulary -> model -> SGD and its schedule -> truncated
backpropagation through time -> validation and test perplexity.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from seq2seq import gemm
from seq2seq.checkpoint import save_model, write_json
from seq2seq.config import add_config_flags, configure
from seq2seq.data.word_corpus import Vocabulary, batchify, read_lines, window, window_starts
from seq2seq.devices import training_precision, use_cpu_cores
from seq2seq.dropout import DROPOUT_MODES
from seq2seq.errors import ArgumentParser, UserError, exits_cleanly, positive, probability
from seq2seq.language_model import LanguageModel, evaluate_nll
from seq2seq.plots import plot_curves
from seq2seq.presets import LM_PRESETS, LMPreset
from seq2seq.roofline import language_model_step, speed_record
from seq2seq.schedule import step_decay_lr
from seq2seq.sparse_grad import enable as sparse_embedding_grads
from seq2seq.training_state import (Progress, add_run_flags, check_finite, check_run, clip_gradients, provenance,
                                    start_training)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Train the PTB LSTM language model of Zaremba et al. (2014).")
    add_config_flags(parser, LM_PRESETS, default="small")
    parser.add_argument("--data-dir", type=Path, required=True, help="holds ptb.{train,valid,test}.txt")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--dropout-mode", choices=DROPOUT_MODES, help="shorthand for --set model.dropout_mode=MODE")
    parser.add_argument("--dropout", type=probability, help="shorthand for --set model.dropout=P")
    parser.add_argument("--epochs", type=positive(int), help="shorthand for --set training.epochs=N")
    parser.add_argument("--time-budget", type=positive(float), metavar="SECONDS",
                        help="train whole epochs while the next one still fits in this many seconds of training")
    add_run_flags(parser, checkpoint_every=1000)
    args = parser.parse_args(argv)
    if args.config is not None and str(args.config) in LM_PRESETS and not args.config.is_file():  # the old spelling
        print(f"ptb_lm.py: --config {args.config} is deprecated; it means --preset {args.config} (--config now "
              f"reads a YAML file)", file=sys.stderr)
        args.preset, args.config = str(args.config), None
    return args


def choose_preset(args: argparse.Namespace) -> LMPreset | None:
    return configure(args, LM_PRESETS, {"--dropout-mode": ("model.dropout_mode", args.dropout_mode),
                                        "--dropout": ("model.dropout", args.dropout),
                                        "--epochs": ("training.epochs", args.epochs)})


def load_corpus(data_dir: Path) -> tuple[Vocabulary, dict[str, torch.Tensor]]:
    """The three PTB splits as id streams, with the vocabulary of the training file."""
    if not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: no such directory")
    lines = {split: read_lines(data_dir / f"ptb.{split}.txt") for split in ("train", "valid", "test")}
    vocabulary = Vocabulary.build(lines["train"], max_size=10000)
    return vocabulary, {split: vocabulary.encode(split_lines) for split, split_lines in lines.items()}


def shard_columns(data: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """This process's contiguous block of batch columns: (steps, B) -> (steps, B / num_processes)."""
    if data.shape[1] % accelerator.num_processes:
        raise UserError(f"batch size {data.shape[1]} does not split over {accelerator.num_processes} processes")
    return data.tensor_split(accelerator.num_processes, dim=1)[accelerator.process_index].to(accelerator.device)


def perplexity(model, stream: torch.Tensor, batch_size: int, unroll: int, accelerator: Accelerator) -> float:
    """exp(mean NLL per token) of a split cut into batch_size columns, whatever the number of processes:
    the columns are shared out when they divide evenly, otherwise every process scores them all."""
    data = batchify(stream, batch_size)
    if batch_size % accelerator.num_processes:
        nll, tokens = evaluate_nll(model, data.to(accelerator.device), unroll)
        return math.exp(nll / tokens)
    nll, tokens = evaluate_nll(model, shard_columns(data, accelerator), unroll)
    totals = accelerator.reduce(torch.tensor([nll, tokens], dtype=torch.float64, device=accelerator.device), "sum")
    return math.exp(totals[0].item() / totals[1].item())


def train_window(model, optimizer, inputs, targets, hidden, training, accelerator, step: int, checkpointer):
    """One truncated-BPTT update on a window; returns the carried (detached) state and the summed NLL."""
    if hidden is not None:  # the state flows on, its history does not
        hidden = tuple(h.detach() for h in hidden)
    nll, hidden = model(inputs, hidden, targets)
    loss = nll / inputs.shape[1]  # mean over the batch, summed over the unrolled steps
    check_finite(loss, step, accelerator, checkpointer)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    clip_gradients(model, training.max_grad_norm, step, accelerator, checkpointer)
    optimizer.step()
    return hidden, nll.item()


@dataclass
class LMProgress(Progress):
    """Progress plus the current epoch's running NLL, token count and training seconds (all processes' words)."""

    nll: float = 0.0
    tokens: int = 0
    epoch_time: float = 0.0


def train(model, optimizer, train_data, streams, preset, args, accelerator) -> LMProgress:
    """Epochs of truncated BPTT, resumable mid-epoch: state holds the step, the window position, the
    epoch's running NLL; the carried LSTM state travels in the checkpoint with the RNG states."""
    training = preset.training
    starts = window_starts(len(train_data), training.unroll)
    total = min(len(starts) * training.epochs, args.max_steps or 10**12)
    fresh = LMProgress()
    hidden = None
    session = start_training(model, optimizer, accelerator, args.output_dir, args, fresh, total,
                             ("train_time", "epoch_time"),
                             tensors=lambda: {} if hidden is None else {"h": hidden[0], "c": hidden[1]})
    state = session.state
    if session.carried:
        hidden = (session.carried["h"].to(accelerator.device), session.carried["c"].to(accelerator.device))
    with session:
        while state.epoch < training.epochs and state.step < total:
            lr = step_decay_lr(state.epoch + 1, training.lr, training.lr_decay, training.decay_after)
            for group in optimizer.param_groups:
                group["lr"] = lr
            while state.position < len(starts) and state.step < total:
                inputs, targets = window(train_data, starts[state.position], training.unroll)
                hidden, nll = train_window(model, optimizer, inputs, targets, hidden, training, accelerator,
                                           state.step + 1, session.checkpointer)
                state.position, state.step = state.position + 1, state.step + 1
                state.nll, state.tokens = state.nll + nll, state.tokens + targets.numel()
                session.stepped(epoch=state.epoch + 1, ppl=f"{math.exp(state.nll / state.tokens):.1f}",
                                lr=f"{lr:.4g}")
            with session.clock.paused():
                end_of_epoch(model, streams, preset, accelerator, state, lr, session)
                if state.position >= len(starts):
                    state.epoch, state.position = state.epoch + 1, 0
                    state.nll, state.tokens, state.epoch_time = 0.0, 0, 0.0
                    hidden = None
            session.save()
            done = len(state.history)
            if args.time_budget and done and state.train_time * (done + 1) / done > args.time_budget:
                break  # at the average epoch time so far, the next epoch would not fit
    return state


def end_of_epoch(model, streams, preset, accelerator, state, lr, session) -> None:
    """Train perplexity over all processes' columns, validation perplexity, one history row."""
    training = preset.training
    totals = accelerator.reduce(torch.tensor([state.nll, state.tokens], dtype=torch.float64,
                                             device=accelerator.device), "sum")
    train_ppl = math.exp(totals[0].item() / totals[1].item())
    valid_ppl = perplexity(model, streams["valid"], training.eval_batch_size, training.unroll, accelerator)
    row = {"epoch": state.epoch + 1, "train_ppl": train_ppl, "valid_ppl": valid_ppl, "lr": lr,
           "words_per_sec": totals[1].item() / max(state.epoch_time, 1e-9), "step": state.step}
    state.history.append(row)
    session.write(f"epoch {row['epoch']:3d} | train ppl {train_ppl:8.2f} | valid ppl {valid_ppl:8.2f} | lr {lr:.4g} "
                  f"| {row['words_per_sec']:6.0f} words/s | {state.train_time:6.0f} s")


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    preset = choose_preset(args)
    if preset is None:  # --print-config
        return None
    training = preset.training
    args.mixed_precision = training_precision(args.mixed_precision)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed, device_specific=True)
    use_cpu_cores(accelerator)
    started = time.time()

    # Data and vocabulary: 10k words from the training file; the training stream cut into B parallel
    # columns, each process taking its share. Validation and test splits do not depend on processes.
    vocabulary, streams = load_corpus(args.data_dir)
    preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, vocab_size=len(vocabulary)))
    train_data = shard_columns(batchify(streams["train"], training.batch_size), accelerator)
    accelerator.print(f"{preset.name}: {preset.model}\n{training}\nvocabulary {len(vocabulary)}, "
                      f"train {len(streams['train'])} tokens, {accelerator.num_processes} process(es) on {accelerator.device}")

    # Model, plain SGD and the paper's step decay.
    model = LanguageModel(preset.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=training.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    # A window's gradient touches only its words' embedding rows: SGD updates those alone, to the same bits
    if sparse_embedding_grads(model, optimizer, accelerator.device, accelerator.num_processes):
        accelerator.print("embedding gradients: the touched rows only (seq2seq.sparse_grad; the same updates)")
    gemm.announce(accelerator.print, accelerator.device, args.mixed_precision)
    check_run(args.output_dir, {"preset": dataclasses.asdict(preset), "seed": args.seed,
                                "data": str(args.data_dir.resolve())}, accelerator, args.overwrite, preset)

    state = train(model, optimizer, train_data, streams, preset, args, accelerator)

    test_ppl = perplexity(model, streams["test"], training.test_batch_size, training.unroll, accelerator)
    wall_time = time.time() - started
    accelerator.print(f"test ppl {test_ppl:.2f} (paper {preset.paper_test_ppl}) | {wall_time:.0f} s")
    results = {
        "config": dataclasses.asdict(preset), "epochs": state.history, "valid_ppl": state.history[-1]["valid_ppl"],
        "test_ppl": test_ppl, "wall_time_s": wall_time, "train_time_s": state.train_time, "steps": state.step,
        "speed": speed(state, preset, args, accelerator), **provenance(args, accelerator),
    }
    if accelerator.is_main_process:
        write_outputs(args.output_dir, accelerator.unwrap_model(model), preset, vocabulary, results)
    accelerator.end_training()
    return results


def speed(state: dict, preset: LMPreset, args, accelerator) -> dict:
    """Training words/s (all processes) against this machine's GEMM-bound ceiling for the step (seq2seq.roofline)."""
    t, m = preset.training, preset.model
    words = state.step * t.unroll * t.batch_size  # each process's columns are batch_size / processes wide
    products = language_model_step(t.batch_size // accelerator.num_processes, t.unroll, m.hidden_size, m.num_layers,
                                   m.vocab_size)
    per_step = t.unroll * t.batch_size // accelerator.num_processes
    return speed_record(words / max(state.train_time, 1e-9), per_step * accelerator.num_processes, products,
                        args.mixed_precision, accelerator.device.type)


def write_outputs(output_dir: Path, model, preset: LMPreset, vocabulary: Vocabulary, results: dict) -> None:
    save_model(output_dir / "model", model, preset.model, extra={"vocabulary": list(vocabulary.words)})
    write_json(output_dir / "results.json", results)
    epochs = [row["epoch"] for row in results["epochs"]]
    plot_curves(output_dir / "curves.png", epochs,
                {"train": [row["train_ppl"] for row in results["epochs"]],
                 "valid": [row["valid_ppl"] for row in results["epochs"]]},
                xlabel="epoch", ylabel="perplexity", log_y=True,
                title=f"PTB {preset.name}, {preset.model.dropout_mode} p={preset.model.dropout}: test {results['test_ppl']:.1f}")


if __name__ == "__main__":
    main()
