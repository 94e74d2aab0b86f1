"""Exact resume: a training subprocess killed with SIGKILL mid-epoch and started again ends with the same
weights, bit for bit, as a run that was never interrupted; SIGTERM saves a checkpoint and stops cleanly."""

import json
import signal

import pytest
import torch
from recipe_runs import final_weights, recipe_args, run, start, wait_for_checkpoint

pytestmark = pytest.mark.slow  # whole recipes, subprocesses: the full tier (pytest -m slow)

EPOCHS = {"ptb_lm": "2", "wmt14_enfr": "2", "timit_am": "2"}


@pytest.mark.parametrize("recipe", ["ptb_lm", "wmt14_enfr", "timit_am"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(recipe, tmp_path):
    args = recipe_args(recipe, tmp_path / "data") + ["--epochs", EPOCHS[recipe], "--checkpoint-every", "1",
                                                     "--keep-checkpoints", "2"]
    straight = run(args + ["--output-dir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = tmp_path / "killed"
    process = start(args + ["--output-dir", str(killed)])
    wait_for_checkpoint(process, killed, 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at, _ = final_weights(killed)
    resumed = run(args + ["--output-dir", str(killed)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr

    step_a, weights_a = final_weights(tmp_path / "straight")
    step_b, weights_b = final_weights(killed)
    assert step_a == step_b > interrupted_at >= 3
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    results_a = json.loads((tmp_path / "straight" / "results.json").read_text())
    results_b = json.loads((killed / "results.json").read_text())
    for key in ("test_ppl", "bleu", "chrf", "frame_accuracy", "per"):
        assert results_a.get(key) == results_b.get(key)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    args = recipe_args("ptb_lm", tmp_path / "data") + ["--epochs", "50", "--checkpoint-every", "1000",
                                                        "--output-dir", str(out)]
    process = start(args)
    first = wait_for_checkpoint(process, out)  # the end of the first epoch
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted by SIGTERM at step ") and "checkpoint saved in" in last
    assert "Traceback" not in stderr
    step = int(last.split("at step ")[1].split(":")[0])
    assert (out / "checkpoints" / f"step-{step:09d}" / "model.safetensors").is_file()
    assert step > first
