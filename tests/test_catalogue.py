"""The bad-input catalogue (README, "When things go wrong"): each case ends in one line on stderr,
exit status 2, no traceback, and nothing lost. Cases covered elsewhere: missing data dirs and bad
flags (test_ptb_recipe, test_timit_recipe), a missing / weightless / truncated model dir and a --ref of
the wrong length (test_translation_recipe), invalid UTF-8 and misaligned files in the reader
(test_parallel_data), SIGTERM (test_resume)."""

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_recipe
from recipe_runs import recipe_args, run

from seq2seq.language_model import LanguageModel
from seq2seq.tokenizer import train_sentencepiece

pytestmark = pytest.mark.slow  # whole recipes, subprocesses: the full tier (pytest -m slow)

ptb_lm = load_recipe("ptb_lm")


def one_line_exit_2(done: subprocess.CompletedProcess, message: str) -> str:
    line = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and message in line, line
    return line


def tiny_ptb(tmp_path, *extra):
    return ptb_lm.main(recipe_args("ptb_lm", tmp_path / "data")[1:] + ["--output-dir", str(tmp_path / "out"), *extra])


def test_output_dir_with_another_runs_checkpoints(tmp_path, capsys):
    tiny_ptb(tmp_path, "--epochs", "1")
    before = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    with pytest.raises(SystemExit) as stopped:
        tiny_ptb(tmp_path, "--epochs", "1", "--dropout", "0.3")
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds checkpoints, model, results.json of another run (different preset)" in err and "--overwrite" in err
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == before  # nothing touched


def test_another_runs_model_and_results_are_kept_without_checkpoints_unless_overwrite(tmp_path, capsys):
    first = tiny_ptb(tmp_path, "--epochs", "1")
    out = tmp_path / "out"
    shutil.rmtree(out / "checkpoints")
    weights, results = (out / "model" / "model.safetensors").read_bytes(), (out / "results.json").read_text()
    with pytest.raises(SystemExit) as stopped:
        tiny_ptb(tmp_path, "--epochs", "1", "--dropout", "0.3")
    assert stopped.value.code == 2
    assert "holds model, results.json of another run (different preset)" in capsys.readouterr().err
    assert (out / "model" / "model.safetensors").read_bytes() == weights and (out / "results.json").read_text() == results
    (out / "run.json").unlink()  # unrecorded outputs are not taken for this run's either
    with pytest.raises(SystemExit):
        tiny_ptb(tmp_path, "--epochs", "1")
    assert "no run.json says what made them" in capsys.readouterr().err
    second = tiny_ptb(tmp_path, "--epochs", "1", "--dropout", "0.3", "--overwrite")
    assert second["config"]["model"]["dropout"] == 0.3 != first["config"]["model"]["dropout"]
    assert json.loads((out / "results.json").read_text())["test_ppl"] == second["test_ppl"]


def test_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    forward, calls = LanguageModel.forward, {"n": 0}

    def poisoned(self, inputs, state=None, targets=None):
        nll, state = forward(self, inputs, state, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 7:
                return nll * float("nan"), state
        return nll, state

    monkeypatch.setattr(LanguageModel, "forward", poisoned)
    with pytest.raises(SystemExit) as stopped:
        tiny_ptb(tmp_path, "--checkpoint-every", "3")
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    last_good = tmp_path / "out" / "checkpoints" / "step-000000006"
    assert err.startswith("error: the training loss became nan at step 7;") and str(last_good) in err
    assert sorted(p.name for p in last_good.parent.iterdir()) == ["step-000000003", "step-000000006"]


def test_inf_gradients_with_a_finite_loss_stop_before_the_update(tmp_path, capsys, monkeypatch):
    forward, calls, steps = LanguageModel.forward, {"n": 0}, []

    def poisoned(self, inputs, state=None, targets=None):
        nll, state = forward(self, inputs, state, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:  # the loss stays finite; the gradient flowing back from it does not
                nll.register_hook(lambda grad: grad * float("inf"))
        return nll, state

    monkeypatch.setattr(LanguageModel, "forward", poisoned)
    sgd_step = torch.optim.SGD.step

    def recorded(self, *args, **kwargs):
        steps.append(calls["n"])
        return sgd_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recorded)
    with pytest.raises(SystemExit) as stopped:
        tiny_ptb(tmp_path, "--checkpoint-every", "2")
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    last_good = tmp_path / "out" / "checkpoints" / "step-000000004"
    assert err.startswith("error: the gradient norm became ") and "at step 5;" in err and str(last_good) in err
    assert "stopped before updating the weights" in err and steps == [1, 2, 3, 4]


class Payload:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


@pytest.mark.parametrize("victim, message", [
    ("optimizer.pt", "refused to load, it holds more than tensors"),
    ("rank-0.pt", "refused to load, it holds more than tensors"),
    ("model.safetensors", "not a readable safetensors file"),
])
def test_pickle_payload_in_a_checkpoint_is_refused_and_never_run(tmp_path, victim, message):
    args = recipe_args("ptb_lm", tmp_path / "data") + ["--epochs", "1", "--output-dir", str(tmp_path / "out")]
    assert run(args).returncode == 0
    marker = tmp_path / "MARKER"
    latest = sorted((tmp_path / "out" / "checkpoints").glob("step-*"))[-1]
    (latest / victim).write_bytes(pickle.dumps({"state": Payload(marker)}))
    line = one_line_exit_2(run(args), message)  # the same command again: it resumes from the latest checkpoint
    assert str(latest / victim) in line
    assert not marker.exists()


def test_pickle_payload_in_a_model_dir_is_never_loaded(tmp_path):
    """seq2seq-translate reads safetensors + JSON only: a pickled model next to config.json is ignored."""
    marker = tmp_path / "MARKER"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"kind": "Translator", "model": {}}')
    for name in ("pytorch_model.bin", "model.pt", "model.bin"):
        (model / name).write_bytes(pickle.dumps(Payload(marker)))
    done = subprocess.run([sys.executable, "-m", "seq2seq.translate", "--model", str(model)], input="a\n",
                          capture_output=True, text=True, timeout=120)
    one_line_exit_2(done, "model.safetensors is missing")
    assert not marker.exists()


def test_truncated_checkpoint_weights(tmp_path):
    args = recipe_args("ptb_lm", tmp_path / "data") + ["--epochs", "1", "--output-dir", str(tmp_path / "out")]
    assert run(args).returncode == 0
    latest = sorted((tmp_path / "out" / "checkpoints").glob("step-*"))[-1]
    data = (latest / "model.safetensors").read_bytes()
    (latest / "model.safetensors").write_bytes(data[: len(data) // 3])
    one_line_exit_2(run(args), "not a readable safetensors file")


@pytest.fixture
def parallel(tmp_path):
    args = recipe_args("wmt14_enfr", tmp_path / "data") + ["--max-steps", "2", "--output-dir", str(tmp_path / "out")]
    return tmp_path / "data", args


def test_parallel_files_of_different_lengths(parallel):
    data, args = parallel
    (data / "train.fr").write_text("\n".join((data / "train.fr").read_text().splitlines()[:-5]) + "\n")
    line = one_line_exit_2(run(args), "has 300 lines but")
    assert str(data / "train.en") in line and str(data / "train.fr") in line and "has 295" in line


def test_invalid_utf8_names_file_and_line_or_is_skipped_and_counted(parallel):
    data, args = parallel
    lines = (data / "train.en").read_bytes().split(b"\n")
    lines[41] = b"caf\xe9 en1"
    (data / "train.en").write_bytes(b"\n".join(lines))
    one_line_exit_2(run(args), f"{data / 'train.en'}, line 42: invalid UTF-8")
    done = run(args + ["--skip-invalid-utf8"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 with invalid UTF-8" in done.stdout


def test_empty_corpus_after_cleaning(parallel):
    data, args = parallel
    (data / "train.en").write_text("\n" * 300)
    one_line_exit_2(run(args), "no training pairs are left after cleaning (kept 0 pairs; removed 300 empty")


def test_tokenizer_that_does_not_match_the_model(parallel, tmp_path):
    data, args = parallel
    assert run(args).returncode == 0
    model = tmp_path / "model"
    shutil.copytree(tmp_path / "out" / "model", model)
    other = train_sentencepiece(["something else entirely"] * 50 + ["x y z"] * 50, tmp_path / "other.model",
                                vocab_size=40)
    shutil.copy(other.path, model / "source.model")
    done = subprocess.run([sys.executable, "-m", "seq2seq.translate", "--model", str(model)], input="en1\n",
                          capture_output=True, text=True, timeout=120)
    one_line_exit_2(done, "is not the one the model was trained with")


@pytest.mark.parametrize("recipe, flags, message", [
    ("wmt14_enfr", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("wmt14_enfr", ["--epochs", "-1"], "must be > 0"),
    ("wmt14_enfr", ["--dropout", "1"], "must be in [0, 1)"),
    ("ptb_lm", ["--checkpoint-every", "0"], "must be > 0"),
    ("timit_am", ["--objective", "hmm"], "invalid choice: 'hmm'"),
])
def test_unknown_flags_and_values_out_of_range(tmp_path, recipe, flags, message):
    one_line_exit_2(run(recipe_args(recipe, tmp_path / "data") + flags + ["--output-dir", str(tmp_path / "o")]),
                    message)


def test_a_checkpoint_overwritten_in_place_is_never_missing(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from seq2seq.training_state import Checkpointer, Progress

    @dataclasses.dataclass
    class Noted(Progress):
        note: str = ""

    accelerator = SimpleNamespace(is_main_process=True, process_index=0, num_processes=1, scaler=None,
                                  wait_for_everyone=lambda: None, unwrap_model=lambda model: model)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpointer = Checkpointer(tmp_path, accelerator)
    checkpointer.save(model, optimizer, Noted(step=5, note="first"))
    rename = Path.rename

    def killed_while_moving_the_new_one(self, target):
        if self.name.endswith(".partial"):
            raise KeyboardInterrupt  # the process dies between moving the old one aside and the new one in
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_while_moving_the_new_one)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save(model, optimizer, Noted(step=5, note="second"))
    monkeypatch.setattr(Path, "rename", rename)
    kept = checkpointer.complete()
    assert [p.name for p in kept] == ["step-000000005"]
    assert json.loads((kept[0] / "progress.json").read_text())["note"] == "first"
    checkpointer.save(model, optimizer, Noted(step=5, note="third"))
    assert json.loads((checkpointer.latest() / "progress.json").read_text())["note"] == "third"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000000005"]
