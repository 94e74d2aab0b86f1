"""Penn Treebank word-level language modelling: Zaremba, Sutskever & Vinyals (2014), Sec. 4.1.

    python recipes/ptb_lm.py --config small --data-dir ../shared/data/ptb --output-dir runs/ptb-small
    accelerate launch recipes/ptb_lm.py --config medium --data-dir ... --output-dir ...

Reads top to bottom like the paper: data -> vocabulary -> model -> SGD and its schedule -> truncated
backpropagation through time -> validation and test perplexity.
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
from seq2seq.checkpoint import save_model, write_json
from seq2seq.data.word_corpus import Vocabulary, batchify, read_lines, window, window_starts
from seq2seq.devices import use_cpu_cores
from seq2seq.dropout import DROPOUT_MODES
from seq2seq.errors import ArgumentParser, UserError, exits_cleanly, positive, probability
from seq2seq.language_model import LanguageModel, evaluate_nll
from seq2seq.plots import plot_curves
from seq2seq.presets import LM_PRESETS, LMPreset
from seq2seq.schedule import step_decay_lr


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Train the PTB LSTM language model of Zaremba et al. (2014).")
    parser.add_argument("--config", choices=LM_PRESETS, default="small", help="paper preset (default: small)")
    parser.add_argument("--data-dir", type=Path, required=True, help="holds ptb.{train,valid,test}.txt")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--dropout-mode", choices=DROPOUT_MODES, help="override the preset's placement")
    parser.add_argument("--dropout", type=probability, help="override the preset's dropout probability")
    parser.add_argument("--epochs", type=positive(int), help="override the preset's number of epochs")
    parser.add_argument("--max-steps", type=positive(int), help="stop after this many updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no")
    return parser.parse_args(argv)


def choose_preset(args: argparse.Namespace) -> LMPreset:
    preset = LM_PRESETS[args.config]()
    model = dataclasses.replace(preset.model, **{k: v for k, v in {
        "dropout": args.dropout, "dropout_mode": args.dropout_mode}.items() if v is not None})
    training = preset.training if args.epochs is None else dataclasses.replace(preset.training, epochs=args.epochs)
    return dataclasses.replace(preset, model=model, training=training)


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


def perplexity(model, data: torch.Tensor, unroll: int, accelerator: Accelerator) -> float:
    """exp(mean NLL per token) over all processes' columns."""
    nll, tokens = evaluate_nll(model, data, unroll)
    totals = accelerator.reduce(torch.tensor([nll, tokens], dtype=torch.float64, device=accelerator.device), "sum")
    return math.exp(totals[0].item() / totals[1].item())


def train_epoch(model, optimizer, data, training, epoch, lr, accelerator, progress, step, max_steps):
    """One pass of truncated BPTT over data (steps, B), stopping early at global step max_steps.
    Returns (train ppl, tokens over all processes, global step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    state, nll_sum, tokens = None, 0.0, 0
    for start in window_starts(len(data), training.unroll):
        inputs, targets = window(data, start, training.unroll)
        if state is not None:  # the state flows on, its history does not
            state = tuple(s.detach() for s in state)
        nll, state = model(inputs, state, targets)
        loss = nll / inputs.shape[1]  # mean over the batch, summed over the unrolled steps
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise UserError(f"the training loss became {loss.item()} at step {step + 1} (epoch {epoch}); lower the learning rate")
        nll_sum, tokens, step = nll_sum + nll.item(), tokens + targets.numel(), step + 1
        progress.update(1)
        progress.set_postfix(epoch=epoch, ppl=f"{math.exp(nll_sum / tokens):.1f}", lr=f"{lr:.4g}", refresh=False)
        if step == max_steps:
            break
    return math.exp(nll_sum / tokens), tokens * accelerator.num_processes, step


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    preset = choose_preset(args)
    training = preset.training
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed, device_specific=True)
    use_cpu_cores(accelerator)
    started = time.time()

    # Data and vocabulary: 10k words from the training file; streams cut into B parallel columns.
    vocabulary, streams = load_corpus(args.data_dir)
    preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, vocab_size=len(vocabulary)))
    train = shard_columns(batchify(streams["train"], training.batch_size), accelerator)
    valid = shard_columns(batchify(streams["valid"], training.eval_batch_size), accelerator)
    test = shard_columns(batchify(streams["test"], training.test_batch_size * accelerator.num_processes), accelerator)
    accelerator.print(f"{preset.name}: {preset.model}\n{training}\nvocabulary {len(vocabulary)}, "
                      f"train {len(streams['train'])} tokens, {accelerator.num_processes} process(es)")

    # Model, plain SGD and the paper's step decay.
    model = LanguageModel(preset.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=training.lr)
    model, optimizer = accelerator.prepare(model, optimizer)

    history, step = [], 0
    windows = len(window_starts(len(train), training.unroll))
    total = min(windows * training.epochs, args.max_steps or math.inf)
    progress = tqdm(total=total, disable=not accelerator.is_local_main_process, unit="step", mininterval=2.0)
    for epoch in range(1, training.epochs + 1):
        lr = step_decay_lr(epoch, training.lr, training.lr_decay, training.decay_after)
        epoch_started = time.time()
        train_ppl, tokens, step = train_epoch(model, optimizer, train, training, epoch, lr, accelerator,
                                                progress, step, args.max_steps)
        words_per_sec = tokens / (time.time() - epoch_started)
        valid_ppl = perplexity(model, valid, training.unroll, accelerator)
        history.append({"epoch": epoch, "train_ppl": train_ppl, "valid_ppl": valid_ppl, "lr": lr,
                        "words_per_sec": words_per_sec, "step": step})
        if accelerator.is_main_process:
            progress.write(f"epoch {epoch:3d} | train ppl {train_ppl:8.2f} | valid ppl {valid_ppl:8.2f} | lr {lr:.4g} "
                           f"| {words_per_sec:6.0f} words/s | {time.time() - started:6.0f} s")
        if step == args.max_steps:
            break
    progress.close()

    test_ppl = perplexity(model, test, training.unroll, accelerator)
    wall_time = time.time() - started
    accelerator.print(f"test ppl {test_ppl:.2f} (paper {preset.paper_test_ppl}) | {wall_time:.0f} s")
    results = {
        "config": dataclasses.asdict(preset), "epochs": history, "valid_ppl": history[-1]["valid_ppl"],
        "test_ppl": test_ppl, "wall_time_s": wall_time, "steps": step, "seed": args.seed,
        "mixed_precision": args.mixed_precision, "num_processes": accelerator.num_processes,
        "versions": {"seq2seq": seq2seq.__version__, "torch": torch.__version__,
                     "accelerate": accelerate.__version__, "python": platform.python_version()},
        "command": " ".join(sys.argv),
    }
    if accelerator.is_main_process:
        write_outputs(args.output_dir, accelerator.unwrap_model(model), preset, vocabulary, results)
    accelerator.end_training()
    return results


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
