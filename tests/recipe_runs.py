"""Command lines for the three recipes' tiny presets on data the tests write themselves, run as real
subprocesses (python or accelerate launch), for resume, multi-process and bad-input tests."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file
from timit_corpus import small_corpus

from seq2seq.data.word_corpus import write_toy_corpus

ROOT = Path(__file__).resolve().parents[1]


def write_split(prefix: Path, count: int, rng: random.Random) -> None:
    """PREFIX.en / PREFIX.fr of a toy language pair: French words are English words renamed, same order."""
    src, tgt = [], []
    for _ in range(count):
        words = [rng.randrange(12) for _ in range(rng.randint(2, 6))]
        src.append(" ".join(f"en{w}" for w in words))
        tgt.append(" ".join(f"fr{w}" for w in words).capitalize() + ".")
    prefix.with_suffix(".en").write_text("\n".join(src) + "\n")
    prefix.with_suffix(".fr").write_text("\n".join(tgt) + "\n")


def write_parallel(root: Path) -> Path:
    rng = random.Random(0)
    for split, count in (("train", 300), ("valid", 20), ("test", 15)):
        write_split(root / split, count, rng)
    return root


def recipe_args(name: str, data: Path) -> list[str]:
    """recipes/NAME.py and its tiny-preset flags on the data under `data` (written on first use)."""
    data.mkdir(parents=True, exist_ok=True)
    if name == "ptb_lm":
        if not (data / "ptb.train.txt").is_file():
            write_toy_corpus(data)
        return ["recipes/ptb_lm.py", "--preset", "tiny", "--data-dir", str(data)]
    if name == "wmt14_enfr":
        if not (data / "train.en").is_file():
            write_parallel(data)
        return ["recipes/wmt14_enfr.py", "--preset", "tiny", "--eval-every", "20", "--train-prefix",
                str(data / "train"), "--valid-prefix", str(data / "valid"), "--test-prefix", str(data / "test")]
    if not (data / "TRAIN").is_dir():
        small_corpus(data)
    return ["recipes/timit_am.py", "--preset", "tiny", "--timit-root", str(data)]


def environment(**extra) -> dict:
    env = {**os.environ, "SEQ2SEQ_CPU_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    env.pop("ACCELERATE_USE_CPU", None)
    return {**env, **extra}


def run(args: list[str], processes: int = 1, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """python RECIPE args, or `accelerate launch --multi_gpu --num_processes N` with CPU processes (gloo)."""
    if processes == 1:
        command = [sys.executable, *args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
        env = {"ACCELERATE_USE_CPU": "true", **env}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environment(**env))


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environment())


def wait_for_checkpoint(process: subprocess.Popen, output_dir: Path, step: int | None = None,
                        timeout: float = 120) -> int:
    """Wait until OUTPUT/checkpoints/step-{step} (any step when None) is complete; return its step."""
    deadline = time.time() + timeout
    while True:
        done = sorted(p for p in (output_dir / "checkpoints").glob("step-*") if (p / "progress.json").is_file())
        reached = [int(p.name.split("-")[1]) for p in done if step is None or p.name == f"step-{step:09d}"]
        if reached:
            return reached[-1]
        if process.poll() is not None:
            raise AssertionError(f"the run ended first: {process.stderr.read()[-2000:]}")
        if time.time() > deadline:
            raise AssertionError(f"no checkpoint {step} after {timeout} s")
        time.sleep(0.005)


def final_weights(output_dir: Path) -> tuple[int, dict]:
    """The step and tensors of the run's last checkpoint."""
    last = sorted((output_dir / "checkpoints").glob("step-*"))[-1]
    return int(last.name.split("-")[1]), load_file(last / "model.safetensors")
