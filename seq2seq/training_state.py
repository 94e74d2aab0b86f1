"""Resumable training: checkpoints that restore a run exactly, and the guards around a training loop.

A checkpoint OUTPUT/checkpoints/step-NNNNNNNNN/ holds
    model.safetensors   the weights (safetensors, no pickle)
    optimizer.pt        optimizer and mixed-precision scaler state (read with weights_only=True)
    rank-R.pt           process R's RNG states (torch, CUDA, Python) and its carried tensors
    progress.json       step, epoch, position in the epoch, history, best score
It is written under a temporary name and renamed into place, so a crash never leaves half a
checkpoint; the last `keep` are kept. With the data order a pure function of (seed, epoch), these
restore a run mid-epoch to the bit on CPU.
"""

from __future__ import annotations

import json
import pickle
import platform
import random
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import accelerate
import torch
from safetensors.torch import save_model as safetensors_save_model
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import WEIGHTS_NAME, load_weights, write_json
from .clipping import clip_grad_norm
from .config import write_config
from .devices import keep_freed_memory
from .errors import UserError, positive

RUN_FILE = "run.json"
# set-ups where accelerate clips the gradients itself (sharded, or reduced its own way)
SELF_CLIPPING = (accelerate.DistributedType.FSDP, accelerate.DistributedType.DEEPSPEED, accelerate.DistributedType.XLA)


@dataclass
class Progress:
    """Where a run stands: saved as each checkpoint's progress.json and restored on resume. A recipe subclasses it
    with what its own loop carries (running sums, counters)."""

    step: int = 0  # updates done
    epoch: int = 0  # epochs finished
    position: int = 0  # batches of the current epoch done (this process's share)
    train_time: float = 0.0  # seconds of training; evaluation and checkpoints excluded
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    best: float | None = None  # the best dev score so far (higher is better)

    @classmethod
    def from_json(cls, payload: dict) -> Progress:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in payload.items() if key in names})


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


def safe_load(path: Path) -> dict:
    """torch.load restricted to tensors and plain containers: a pickle that would run code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"{path}: refused to load, it holds more than tensors and plain values ({first})") from None
    except (OSError, RuntimeError, EOFError) as error:
        raise UserError(f"{path}: unreadable training state ({error})") from None


class Checkpointer:
    """Save and restore OUTPUT/checkpoints/step-N; every process takes part, the main one writes."""

    def __init__(self, output_dir: Path, accelerator, keep: int = 3):
        self.root, self.accelerator, self.keep = Path(output_dir) / "checkpoints", accelerator, keep

    def complete(self) -> list[Path]:
        """Finished checkpoints, oldest first (one caught mid-replacement is first put back, see replace_directory)."""
        if not self.root.is_dir():
            return []
        for replaced in self.root.glob(".step-*.replaced"):
            final = self.root / replaced.name[1 : -len(".replaced")]
            if not final.exists() and self.accelerator.is_main_process:
                replaced.rename(final)
        return sorted(p for p in self.root.glob("step-*") if (p / "progress.json").is_file())

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, model, optimizer, progress: Progress, tensors: dict | None = None) -> Path:
        acc = self.accelerator
        final = self.root / f"step-{progress.step:09d}"
        temporary = self.root / f".{final.name}.partial"
        if acc.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
            safetensors_save_model(acc.unwrap_model(model), str(temporary / "model.safetensors"))
            scaler = acc.scaler.state_dict() if getattr(acc, "scaler", None) is not None else {}
            torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler}, temporary / "optimizer.pt")
        acc.wait_for_everyone()
        torch.save({"rng": rng_state(), "tensors": tensors or {}}, temporary / f"rank-{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json(temporary / "progress.json", {**asdict(progress), "num_processes": acc.num_processes})
            replace_directory(temporary, final)
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load(self, path: Path, model, optimizer) -> tuple[dict, dict]:
        """Restore model, optimizer, scaler and this process's RNG; returns (progress.json's fields, carried tensors)."""
        acc = self.accelerator
        progress = json.loads((path / "progress.json").read_text(encoding="utf-8"))
        if progress.get("num_processes", 1) != acc.num_processes:
            raise UserError(f"{path} was written by {progress['num_processes']} process(es); resume it with "
                            f"the same number (now {acc.num_processes})")
        load_weights(path, acc.unwrap_model(model))
        state = safe_load(path / "optimizer.pt")
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and getattr(acc, "scaler", None) is not None:
            acc.scaler.load_state_dict(state["scaler"])
        mine = safe_load(path / f"rank-{acc.process_index}.pt")
        set_rng_state(mine["rng"])
        return progress, mine["tensors"]


def replace_directory(new: Path, final: Path) -> None:
    """Move `new` to `final`. An existing `final` is first renamed aside to .NAME.replaced and deleted only
    once `new` is in place, so there is no moment without either on disk (Checkpointer.complete() puts a
    .replaced directory back if a crash comes between the two renames)."""
    if not final.exists():
        new.rename(final)
        return
    aside = final.with_name(f".{final.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)
    final.rename(aside)
    new.rename(final)
    shutil.rmtree(aside)


RUN_OUTPUTS = ("checkpoints", "model", "results.json")


def check_run(output_dir: Path, run: dict, accelerator, overwrite: bool = False, config=None) -> None:
    """OUTPUT/run.json records what made the run whose checkpoints, model and results OUTPUT holds. The same
    run continues there; another run (different fields, or no run.json beside them) is refused in one line,
    unless overwrite: then those outputs are deleted and the run starts afresh. With config (the resolved
    preset), OUTPUT/config.yaml is written too (seq2seq.config: --config reads it back)."""
    output_dir = Path(output_dir)
    path = output_dir / RUN_FILE
    run = json.loads(json.dumps(run))  # tuples -> lists, as read back
    held = [name for name in RUN_OUTPUTS if (output_dir / name).is_file() or any((output_dir / name).glob("*"))]
    if held:
        stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        differ = None if stored is None else sorted(k for k in set(stored) | set(run) if stored.get(k) != run.get(k))
        if (stored is None or differ) and not overwrite:
            why = f"different {', '.join(differ)}" if stored is not None else f"no {RUN_FILE} says what made them"
            raise UserError(f"{output_dir} holds {', '.join(held)} of another run ({why}); use a new --output-dir, "
                            f"the original settings, or --overwrite")
    accelerator.wait_for_everyone()  # every process has looked before anything is removed or written
    if accelerator.is_main_process:
        if held and overwrite:
            for name in held:
                target = output_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        write_json(path, run)
        if config is not None:
            write_config(output_dir / "config.yaml", config)
    accelerator.wait_for_everyone()


class Interruption:
    """Turn SIGTERM and Ctrl-C into a flag the training loop checks between steps, so that it can save
    a checkpoint and stop cleanly instead of dying mid-write. All processes agree on the flag."""

    def __init__(self, accelerator):
        self.accelerator, self.signal = accelerator, None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._catch) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _catch(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def requested(self) -> bool:
        flag = torch.tensor([0.0 if self.signal is None else 1.0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, "max")
        return bool(flag.item())


class TrainingClock:
    """Seconds spent training, added to the progress field of each key (so they survive a resume); what runs in
    paused() (checkpoints, evaluation) is not counted."""

    def __init__(self, state: Progress, keys: tuple[str, ...] = ("train_time",)):
        self.state, self.keys, self.started = state, keys, time.time()

    def seconds(self) -> float:
        """Training time so far, the running stretch included."""
        return getattr(self.state, self.keys[0]) + time.time() - self.started

    def stop(self) -> None:
        """Add the running stretch to the state."""
        now = time.time()
        for key in self.keys:
            setattr(self.state, key, getattr(self.state, key) + now - self.started)
        self.started = now

    @contextmanager
    def paused(self):
        self.stop()
        try:
            yield
        finally:
            self.started = time.time()


def save_or_stop(interruption: Interruption, step: int, every: int, save) -> None:
    """Call save() every `every` steps, and when a stop was requested; then end the run with one line."""
    stop = interruption.requested()
    if stop or step % every == 0:
        path = save()
        if stop:
            raise UserError(f"interrupted by {interruption.signal or 'a signal'} at step {step}: checkpoint saved "
                            f"in {path}; run the same command again to resume")


def check_finite(loss: torch.Tensor, step: int, accelerator, checkpointer: Checkpointer) -> None:
    """Stop before a non-finite loss reaches the weights, pointing at the last good checkpoint."""
    value = loss.detach().float().reshape(1)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, "sum")
    if not torch.isfinite(value).all():
        stop_before_update(f"the training loss became {value.item()}", step, checkpointer)


def clip_gradients(model, max_norm: float, step: int, accelerator, checkpointer: Checkpointer) -> float:
    """Clip the gradients' global norm to max_norm (every rank sees the same, reduced gradients) and stop
    before the update when the norm is inf or NaN: a finite loss can still have such gradients. Under fp16
    loss scaling they are the scaler's to handle (it skips that update and lowers the scale), so they pass.
    FSDP, DeepSpeed and XLA clip their own way (accelerate's); otherwise seq2seq.clipping, which skips the
    no-op multiply when nothing is clipped."""
    if accelerator.distributed_type in SELF_CLIPPING:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    else:
        accelerator.unscale_gradients()  # fp16: the loss scale removed first (a no-op otherwise)
        norm = clip_grad_norm(model.parameters(), max_norm)
    if getattr(accelerator, "scaler", None) is None and not bool(torch.isfinite(norm)):
        stop_before_update(f"the gradient norm became {float(norm)} with a finite loss", step, checkpointer)
    return float(norm)


def stop_before_update(what: str, step: int, checkpointer: Checkpointer) -> None:
    latest = checkpointer.latest()
    kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
    raise UserError(f"{what} at step {step}; stopped before updating the weights, {kept}; lower the learning "
                    f"rate or check the data")


def resume(checkpointer: Checkpointer, explicit: Path | None, model, optimizer, fresh: Progress
           ) -> tuple[Progress, dict]:
    """Continue from `explicit` (a checkpoint dir), else from the output dir's latest checkpoint, else
    start with `fresh` progress. Returns (progress, of fresh's type; carried tensors)."""
    if explicit is not None and not (Path(explicit) / "progress.json").is_file():
        raise UserError(f"{explicit}: not a checkpoint directory (no progress.json) (--resume)")
    path = Path(explicit) if explicit is not None else checkpointer.latest()
    if path is None:
        return fresh, {}
    payload, tensors = checkpointer.load(path, model, optimizer)
    progress = type(fresh).from_json(payload)
    checkpointer.accelerator.print(f"resuming from {path}: step {progress.step}, epoch {progress.epoch}, "
                                   f"batch {progress.position} of that epoch")
    return progress, tensors


# --- What every recipe's loop needs around it ---

def add_run_flags(parser, checkpoint_every: int, precisions: tuple[str, ...] = ("no", "bf16")) -> None:
    """The flags every recipe shares: --max-steps, --seed, --mixed-precision, checkpoints, --overwrite, --resume."""
    group = parser.add_argument_group("run")
    group.add_argument("--max-steps", type=positive(int), help="stop after this many updates")
    group.add_argument("--seed", type=int, default=0, help="fixes the result on a CPU (default: 0)")
    group.add_argument("--mixed-precision", choices=("auto", *precisions), default="auto",
                       help="auto: bf16 autocast where the hardware serves it (CUDA with bf16, a CPU with "
                            "AVX512-BF16 / AMX), else fp32; no: fp32; a bf16 request on hardware without it runs "
                            "fp32 with a one-line notice (default: auto)")
    group.add_argument("--checkpoint-every", type=positive(int), default=checkpoint_every,
                       help=f"updates between checkpoints (default: {checkpoint_every})")
    group.add_argument("--keep-checkpoints", type=positive(int), default=3, help="(default: 3)")
    group.add_argument("--overwrite", action="store_true",
                       help="start afresh in an output dir that holds another run's checkpoints, model or results")
    group.add_argument("--resume", type=Path, help="a checkpoint dir (default: the output dir's latest, if any)")


def provenance(args, accelerator) -> dict:
    """What results.json records about how a run was made."""
    return {"seed": args.seed, "mixed_precision": getattr(args, "mixed_precision", "no"),
            "num_processes": accelerator.num_processes, "command": " ".join(sys.argv),
            "versions": {"seq2seq": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__,
                         "python": platform.python_version()}}


class TrainingSession:
    """The scaffolding around a recipe's own loop: resume (or the fresh state), the progress bar, the training
    clock, SIGTERM / Ctrl-C handling, checkpoints every --checkpoint-every updates, the best model kept.

        with start_training(model, optimizer, accelerator, output_dir, args, fresh, total) as session:
            state = session.state                     # a Progress: what a checkpoint's progress.json holds
            ... one update ...; state.step += 1
            session.stepped(loss=...)                 # progress bar; a checkpoint when due or when stopping
    """

    def __init__(self, model, optimizer, accelerator, output_dir: Path, args, fresh: Progress, total: int,
                 clock_keys: tuple[str, ...] = ("train_time",), tensors=None):
        self.model, self.optimizer, self.accelerator = model, optimizer, accelerator
        self.checkpointer = Checkpointer(output_dir, accelerator, args.keep_checkpoints)
        self.state, self.carried = resume(self.checkpointer, args.resume, model, optimizer, fresh)
        self.every, self.tensors = args.checkpoint_every, tensors or (lambda: {})
        self.bar = tqdm(total=total, initial=self.state.step, disable=not accelerator.is_main_process, unit="step",
                        mininterval=2.0)
        self.clock = TrainingClock(self.state, clock_keys)
        self.interruption = Interruption(accelerator)

    def __enter__(self) -> TrainingSession:
        self.bar.__enter__()
        self.interruption.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.interruption.__exit__(*exc)
        self.bar.__exit__(*exc)

    def save(self) -> Path:
        """A checkpoint of the current state; its time is not counted as training time."""
        with self.clock.paused():
            return self.checkpointer.save(self.model, self.optimizer, self.state, self.tensors())

    def stepped(self, **postfix) -> None:
        """After an update: the progress bar, then a checkpoint when one is due or a stop was requested."""
        self.advance(**postfix)
        self.checkpoint_if_due()

    def advance(self, **postfix) -> None:
        """The progress bar moves one update, showing postfix."""
        self.bar.update(1)
        self.bar.set_postfix(refresh=False, **postfix)

    def checkpoint_if_due(self) -> None:
        """A checkpoint every --checkpoint-every updates; on SIGTERM / Ctrl-C one, then a clean stop (UserError)."""
        save_or_stop(self.interruption, self.state.step, self.every, self.save)

    def write(self, line: str) -> None:
        """A log line above the progress bar (main process only)."""
        if self.accelerator.is_main_process:
            self.bar.write(line)

    def keep_if_best(self, score: float, save_model) -> bool:
        """Record score as state.best when it beats the best so far, and call save_model() (main process)."""
        improved = self.state.best is None or score > self.state.best
        if improved:
            self.state.best = score
            if self.accelerator.is_main_process:
                save_model()
        return improved


def start_training(model, optimizer, accelerator, output_dir: Path, args, fresh: Progress, total: int,
                   clock_keys: tuple[str, ...] = ("train_time",), tensors=None) -> TrainingSession:
    """A TrainingSession, resumed from the output dir's latest checkpoint (or --resume) when there is one.
    From here on freed memory is kept for reuse (seq2seq.devices.keep_freed_memory): steps allocate alike."""
    keep_freed_memory()
    return TrainingSession(model, optimizer, accelerator, output_dir, args, fresh, total, clock_keys, tensors)


def load_best(model_dir: Path, model, accelerator, save_model) -> None:
    """Load the best model kept during training; a run that never scored one saves the current weights first."""
    if accelerator.is_main_process and not (Path(model_dir) / WEIGHTS_NAME).is_file():
        save_model()
    accelerator.wait_for_everyone()
    load_weights(model_dir, accelerator.unwrap_model(model))
