"""TIMIT acoustic modelling with a regularised stacked LSTM: Zaremba et al. (2014), Sec. 4.3, on the
TIMIT layout (the LDC corpus, or any corpus stored like it).

    python recipes/timit_am.py --timit-root ../shared/data/timit-synth --output-dir runs/timit
    accelerate launch recipes/timit_am.py --timit-root /data/TIMIT --output-dir runs/timit --objective ctc
    python recipes/timit_am.py --eval-only --model runs/timit/model --timit-root /data/TIMIT

Reads top to bottom like the paper: corpus and speaker splits -> filterbank features -> the LSTM with
dropout on its vertical connections -> training -> per-epoch dev scores -> test frame accuracy / PER.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

from seq2seq.acoustic_model import OBJECTIVES, AcousticModel
from seq2seq.checkpoint import write_json
from seq2seq.config import add_config_flags, configure
from seq2seq.data.batching import shard_evenly, token_batches
from seq2seq.devices import training_precision, use_cpu_cores
from seq2seq.dropout import DROPOUT_MODES
from seq2seq.errors import ArgumentParser, UserError, exits_cleanly, positive, probability
from seq2seq.plots import plot_curves
from seq2seq.presets import ACOUSTIC_PRESETS, AcousticPreset
from seq2seq.roofline import acoustic_model_step, speed_record
from seq2seq.model_dir import load_acoustic_model, save_acoustic_model
from seq2seq.speech.features import (FeatureConfig, FeatureSet, cached_extract, mean_and_inv_std, normalize_per_speaker,
                                     padded_batch)
from seq2seq.speech.phones import FOLD_48_TO_39
from seq2seq.speech.scoring import phone_error_rate, score_utterance
from seq2seq.speech.timit import find_utterances, split_speakers
from seq2seq.training_state import (Progress, add_run_flags, check_finite, check_run, clip_gradients, load_best,
                                    provenance, start_training)


TRAINING_FLAGS = ("preset", "config", "overrides", "objective", "dropout_mode", "dropout", "epochs", "max_steps", "seed",
                  "checkpoint_every", "keep_checkpoints", "overwrite", "resume")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description="Train (or score) a TIMIT LSTM acoustic model.")
    parser.add_argument("--timit-root", type=Path, required=True, help="holds TRAIN/ and TEST/ (any letter case)")
    parser.add_argument("--output-dir", type=Path, help="default: runs/timit-PRESET-OBJECTIVE")
    add_config_flags(parser, ACOUSTIC_PRESETS, default="default")
    parser.add_argument("--objective", choices=OBJECTIVES, help="frame: framewise cross-entropy (the paper, the "
                        "presets' default); ctc: CTC with phone error rate; shorthand for --set model.objective=...")
    parser.add_argument("--dropout-mode", choices=DROPOUT_MODES, help="shorthand for --set model.dropout_mode=MODE")
    parser.add_argument("--dropout", type=probability, help="shorthand for --set model.dropout=P")
    parser.add_argument("--epochs", type=positive(int), help="shorthand for --set training.epochs=N")
    parser.add_argument("--cache-dir", type=Path, help="feature cache (default: OUTPUT/features)")
    add_run_flags(parser, checkpoint_every=200)
    parser.add_argument("--eval-only", action="store_true", help="score --model on the test split and exit")
    parser.add_argument("--model", type=Path, help="a trained model dir (with --eval-only)")
    args = parser.parse_args(argv)
    if args.eval_only and args.model is None:
        parser.error("--eval-only needs --model DIR")
    given = [f"--{name.replace('_', '-')}" for name in TRAINING_FLAGS if getattr(args, name) != parser.get_default(name)]
    if args.eval_only and given:
        parser.error(f"--eval-only scores a model with its own settings; {', '.join(given)} would be ignored")
    return args


def choose_preset(args: argparse.Namespace) -> AcousticPreset | None:
    return configure(args, ACOUSTIC_PRESETS, {"--objective": ("model.objective", args.objective),
                                              "--dropout": ("model.dropout", args.dropout),
                                              "--dropout-mode": ("model.dropout_mode", args.dropout_mode),
                                              "--epochs": ("training.epochs", args.epochs)})


# --- Corpus and features ---

def load_features(root: Path, features: FeatureConfig, cache_dir: Path, splits_wanted, accelerator
                  ) -> dict[str, FeatureSet]:
    """Features of the wanted splits, extracted once (main process first) and then read from the cache."""
    split, how = split_speakers(find_utterances(root))
    accelerator.print(f"{root}: {how}; " + ", ".join(f"{k} {len(v)} utterances" for k, v in split.items()))
    for name in splits_wanted:
        if not split[name]:
            raise UserError(f"{root}: the {name} split is empty (TIMIT needs TRAIN/ and TEST/ speakers)")
    data = {}
    with accelerator.main_process_first():
        for name in splits_wanted:
            data[name] = cached_extract(split[name], features, cache_dir, name, log=accelerator.print)
    if features.normalization == "speaker":
        data = {name: normalize_per_speaker(d) for name, d in data.items()}
    return data


def batches(data: FeatureSet, size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> list[list[int]]:
    """Utterances of similar length together, a seeded order per epoch."""
    lengths = data.lengths()
    return token_batches(lengths, lengths, 10**12, max_sentences=size, seed=seed, epoch=epoch, shuffle=shuffle)


# --- Scoring: frame accuracy on 39 classes, phone error rate on 39 classes ---

@torch.no_grad()
def evaluate(model, data: FeatureSet, preset: AcousticPreset, accelerator, beam: bool = False) -> dict:
    """Loss, frame accuracy (frame objective) and PER over every utterance, gathered from all processes."""
    model.eval()
    unwrapped, fold = accelerator.unwrap_model(model), torch.tensor(FOLD_48_TO_39)
    mine = batches(data, 16, shuffle=False)[accelerator.process_index :: accelerator.num_processes]
    rows = []  # (utterance index, correct frames, scored frames, hypothesis, reference)
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # summed loss, its normaliser
    for indices in mine:
        batch = padded_batch(data, indices, accelerator.device)
        logits = unwrapped(batch["features"], batch["lengths"])  # (T, B, C)
        loss, count = unwrapped.loss(logits, batch["lengths"], batch["labels"], batch["phones"], batch["phone_lengths"])
        totals += torch.stack([loss.double(), count.double()])
        for b, i in enumerate(indices):
            rows.append((i, *score_utterance(logits[:, b].cpu(), int(batch["lengths"][b]), batch["labels"][:, b].cpu(),
                                             data.utterance(i)[2].tolist(), unwrapped.config.objective, fold,
                                             preset.training.beam_size if beam else 0)))
    rows = sorted(gather_object(rows))  # corpus order, every utterance once
    totals = accelerator.reduce(totals, "sum")
    model.train()
    scored = sum(r[2] for r in rows)
    result = {"loss": totals[0].item() / max(1.0, totals[1].item()),
              "per": phone_error_rate([r[3] for r in rows], [r[4] for r in rows]),
              "utterances": len({r[0] for r in rows}), "scored_frames": scored}
    if unwrapped.config.objective == "frame":
        result["frame_accuracy"] = 100.0 * sum(r[1] for r in rows) / max(1, scored)
    return result


# --- Training ---

@dataclass
class AMProgress(Progress):
    """Progress plus the training frames seen (all processes), for frames/s."""

    frames: int = 0


def train(model, optimizer, data, preset, args, accelerator, output_dir: Path) -> dict:
    training, corpus = preset.training, data["train"]
    per_epoch = math.ceil(len(batches(corpus, training.batch_size)) / accelerator.num_processes)
    total = min(per_epoch * training.epochs, args.max_steps or 10**12)
    session = start_training(model, optimizer, accelerator, output_dir, args, AMProgress(), total)
    state = session.state
    with session:
        while state.epoch < training.epochs and state.step < total:
            order = batches(corpus, training.batch_size, args.seed, state.epoch)
            mine = shard_evenly(order, accelerator.num_processes, accelerator.process_index)
            while state.position < len(mine) and state.step < total:
                batch = padded_batch(corpus, mine[state.position], accelerator.device)
                loss = train_step(model, optimizer, batch, training, accelerator, state.step + 1, session.checkpointer)
                state.step += 1
                state.position += 1
                state.frames += int(batch["lengths"].sum()) * accelerator.num_processes
                session.stepped(epoch=state.epoch + 1, loss=f"{loss:.3f}",
                                frames_s=f"{state.frames / session.clock.seconds():.0f}")
            with session.clock.paused():
                if state.position >= len(mine):
                    state.epoch, state.position = state.epoch + 1, 0
                end_of_epoch(model, data, preset, accelerator, output_dir, session)
                session.checkpointer.save(model, optimizer, state)
    return state


def train_step(model, optimizer, batch, training, accelerator, step: int, checkpointer) -> float:
    unwrapped = accelerator.unwrap_model(model)
    logits = model(batch["features"], batch["lengths"])
    loss, count = unwrapped.loss(logits, batch["lengths"], batch["labels"], batch["phones"], batch["phone_lengths"])
    loss = loss / count.clamp_min(1)
    check_finite(loss, step, accelerator, checkpointer)
    accelerator.backward(loss)
    clip_gradients(model, training.max_grad_norm, step, accelerator, checkpointer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def end_of_epoch(model, data, preset, accelerator, output_dir, session) -> None:
    """Dev scores; the best model (frame accuracy, or -PER under CTC) goes to OUTPUT/model."""
    state, dev = session.state, evaluate(model, data["dev"], preset, accelerator)
    state.history.append({"epoch": state.epoch, "step": state.step,
                             **{f"dev_{key}": value for key, value in dev.items()}})
    improved = session.keep_if_best(dev.get("frame_accuracy", -dev["per"]), lambda: save_acoustic_model(
        output_dir / "model", accelerator.unwrap_model(model), preset))
    accuracy = f"frame acc {dev['frame_accuracy']:.2f}% | " if "frame_accuracy" in dev else ""
    session.write(f"epoch {state.epoch:3d} | dev loss {dev['loss']:.3f} | {accuracy}PER {dev['per']:.2f}%"
                  f"{' *' if improved else ''}")


# --- The experiment ---

@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.mixed_precision = training_precision(args.mixed_precision)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed, device_specific=True)
    use_cpu_cores(accelerator)
    if args.eval_only:
        return eval_only(args, accelerator)
    preset = choose_preset(args)
    if preset is None:  # --print-config
        return None
    output_dir = args.output_dir or Path("runs") / f"timit-{preset.name}-{preset.model.objective}"
    started = time.time()

    # Corpus, speaker splits and features (cached); global normalisation from training frames only.
    data = load_features(args.timit_root, preset.features, args.cache_dir or output_dir / "features",
                         ("train", "dev", "test"), accelerator)
    model = AcousticModel(preset.model)
    if preset.features.normalization == "global":
        model.input_mean, model.input_inv_std = mean_and_inv_std(data["train"].features)
    accelerator.print(f"{preset.name}: {preset.model}\n{preset.features}\n{preset.training}\n"
                      f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                      f"{accelerator.num_processes} process(es) on {accelerator.device}")
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.training.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    check_run(output_dir, {"preset": dataclasses.asdict(preset), "seed": args.seed,
                           "timit_root": str(args.timit_root.resolve())}, accelerator, args.overwrite, preset)

    state = train(model, optimizer, data, preset, args, accelerator, output_dir)

    # Test: the best model by dev score, with beam search under CTC.
    load_best(output_dir / "model", model, accelerator,
              lambda: save_acoustic_model(output_dir / "model", accelerator.unwrap_model(model), preset))
    test = evaluate(model, data["test"], preset, accelerator, beam=True)
    wall_time = time.time() - started
    results = {**test, "dev": state.history, "steps": state.step, "train_time_s": state.train_time,
               "wall_time_s": wall_time, "train_frames": len(data["train"].features),
               "speed": speed(state, data["train"], preset, args, accelerator),
               "config": dataclasses.asdict(preset), **provenance(args, accelerator)}
    accelerator.print(f"test: {describe(test)} | {wall_time:.0f} s")
    if accelerator.is_main_process:
        write_json(output_dir / "results.json", results)
        plot(output_dir / "curves.png", state.history, preset, test)
    return results


def speed(state: AMProgress, train: FeatureSet, preset: AcousticPreset, args, accelerator) -> dict:
    """Training frames/s against the GEMM-bound ceiling of a batch of mean-length utterances (seq2seq.roofline)."""
    c, batch = preset.model, preset.training.batch_size // accelerator.num_processes or 1
    frames = round(sum(train.lengths()) / len(train))
    products = acoustic_model_step(frames, batch, c.input_size, c.hidden_size, c.num_layers, c.num_classes,
                                   c.bidirectional)
    return speed_record(state.frames / max(state.train_time, 1e-9), frames * batch * accelerator.num_processes,
                        products, args.mixed_precision, accelerator.device.type)


def eval_only(args, accelerator) -> dict:
    model, features, stored = load_acoustic_model(args.model)  # decoding settings from the model dir too
    preset = ACOUSTIC_PRESETS.get(stored.get("preset"), ACOUSTIC_PRESETS["default"])()
    beam_size = stored.get("beam_size", preset.training.beam_size)
    preset = dataclasses.replace(preset, features=features, model=model.config,
                                 training=dataclasses.replace(preset.training, beam_size=beam_size))
    cache = args.cache_dir or args.model.parent / "features"
    data = load_features(args.timit_root, features, cache, ("test",), accelerator)
    model = accelerator.prepare(model)
    test = evaluate(model, data["test"], preset, accelerator, beam=True)
    accelerator.print(f"test: {describe(test)}")
    results = {**test, "model": str(args.model), "timit_root": str(args.timit_root),
               "versions": provenance(args, accelerator)["versions"]}
    if args.output_dir and accelerator.is_main_process:
        write_json(args.output_dir / "results.json", results)
    return results


def describe(scores: dict) -> str:
    accuracy = f"frame accuracy {scores['frame_accuracy']:.2f}% | " if "frame_accuracy" in scores else ""
    return f"{accuracy}PER {scores['per']:.2f}% | loss {scores['loss']:.3f}"


def plot(path: Path, history: list[dict], preset: AcousticPreset, test: dict) -> None:
    metric = "dev_frame_accuracy" if "frame_accuracy" in test else "dev_per"
    plot_curves(path, [row["epoch"] for row in history], {metric: [row[metric] for row in history]},
                xlabel="epoch", ylabel="%", title=f"TIMIT {preset.name}, {preset.model.objective}, "
                f"{preset.model.dropout_mode} p={preset.model.dropout}: test {describe(test).split(' | ')[0]}")


if __name__ == "__main__":
    main()
