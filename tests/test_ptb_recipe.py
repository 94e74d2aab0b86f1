"""The PTB recipe end to end on a generated corpus, in seconds."""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, load_recipe

from seq2seq.data.word_corpus import Vocabulary, batchify, read_lines
from seq2seq.devices import bf16_supported
from seq2seq.language_model import evaluate_nll, load_language_model

pytestmark = pytest.mark.slow  # whole recipes, subprocesses: the full tier (pytest -m slow)

ptb_lm = load_recipe("ptb_lm")


def run(corpus, out, *extra):
    return ptb_lm.main(["--preset", "tiny", "--data-dir", str(corpus), "--output-dir", str(out), *extra])


def test_tiny_run_learns_and_writes_everything(word_corpus, tmp_path):
    out = tmp_path / "run"
    results = run(word_corpus, out, "--epochs", "3", "--mixed-precision", "no")  # fp32: evaluated again below
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["test_ppl"] == pytest.approx(results["test_ppl"])
    assert [row["epoch"] for row in on_disk["epochs"]] == [1, 2, 3]
    assert set(on_disk["epochs"][0]) >= {"epoch", "train_ppl", "valid_ppl", "lr", "words_per_sec"}
    assert on_disk["versions"]["torch"] == torch.__version__ and on_disk["wall_time_s"] > 0
    speed = on_disk["speed"]  # achieved words/s against this machine's GEMM-bound ceiling
    assert speed["efficiency"] == pytest.approx(speed["units_per_sec"] / speed["ceiling_units_per_sec"])
    assert speed["units_per_sec"] == pytest.approx(on_disk["steps"] * 5 * 4 / on_disk["train_time_s"])  # unroll x batch
    assert speed["precision"] == "fp32" and speed["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert [row["lr"] for row in on_disk["epochs"]] == [1.0, 1.0, 0.5]  # tiny: halve after epoch 1
    # 25 words; the cycle makes each next word nearly certain, so perplexity falls far below 25.
    assert on_disk["epochs"][-1]["valid_ppl"] < on_disk["epochs"][0]["train_ppl"]
    assert results["test_ppl"] < 8
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model, vocabulary = load_language_model(out / "model")
    vocab = Vocabulary(tuple(vocabulary))
    assert vocab == Vocabulary.build(read_lines(word_corpus / "ptb.train.txt"))
    test = batchify(vocab.encode(read_lines(word_corpus / "ptb.test.txt")), 2)
    nll, tokens = evaluate_nll(model, test, unroll=5)
    assert math.exp(nll / tokens) == pytest.approx(results["test_ppl"], rel=1e-6)


def test_same_seed_same_numbers_other_seed_other_numbers(word_corpus, tmp_path):
    a = run(word_corpus, tmp_path / "a", "--max-steps", "40", "--seed", "7")
    b = run(word_corpus, tmp_path / "b", "--max-steps", "40", "--seed", "7")
    c = run(word_corpus, tmp_path / "c", "--max-steps", "40", "--seed", "8")
    assert a["epochs"][0]["train_ppl"] == b["epochs"][0]["train_ppl"] and a["test_ppl"] == b["test_ppl"]
    assert a["test_ppl"] != c["test_ppl"]
    assert a["steps"] == 40 and len(a["epochs"]) == 1


@pytest.mark.parametrize("mode", ["none", "naive", "variational"])
def test_every_dropout_mode_trains(word_corpus, tmp_path, mode):
    results = run(word_corpus, tmp_path / mode, "--dropout-mode", mode, "--max-steps", "30")
    assert results["config"]["model"]["dropout_mode"] == mode
    assert results["test_ppl"] < 25  # better than uniform over the 25 words after 30 steps


@pytest.mark.parametrize("requested", ["bf16", "auto", None])  # None: the default, auto
def test_mixed_precision_is_what_the_cpu_serves_and_is_recorded(word_corpus, tmp_path, requested):
    flags = [] if requested is None else ["--mixed-precision", requested]
    results = run(word_corpus, tmp_path / "mp", *flags, "--max-steps", "30")
    served = "bf16" if bf16_supported(torch.device("cpu")) else "no"
    assert results["mixed_precision"] == served and math.isfinite(results["test_ppl"])
    assert results["speed"]["precision"] == ("bf16" if served == "bf16" else "fp32")


def cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "ptb_lm.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_missing_data_dir_is_one_line_exit_2(tmp_path):
    result = cli("--preset", "tiny", "--data-dir", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --data-dir {tmp_path / 'nowhere'}: no such directory"


@pytest.mark.parametrize("flags, message", [
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["--config", "huge"], "--config huge: no such file"),
    (["--dropout-mode", "sometimes"], "argument --dropout-mode: invalid choice"),
    (["--dropout", "1.5"], "argument --dropout: must be in [0, 1), got 1.5"),
    (["--epochs", "0"], "argument --epochs: must be > 0, got 0"),
])
def test_bad_flags_are_one_line_exit_2(word_corpus, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run(word_corpus, tmp_path / "o", *flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_empty_data_file_is_one_line_exit_2(word_corpus, tmp_path, capsys):
    (word_corpus / "ptb.valid.txt").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        run(word_corpus, tmp_path / "o")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {word_corpus / 'ptb.valid.txt'}: the file holds no words"
