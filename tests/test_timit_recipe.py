"""The TIMIT recipe end to end on a generated TIMIT-layout corpus: train, score, reload, score again."""

import itertools
import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, load_recipe
from timit_corpus import small_corpus

from seq2seq.acoustic_model import AcousticModel, AcousticModelConfig
from seq2seq.speech.features import IGNORE

pytestmark = pytest.mark.slow  # whole recipes, subprocesses: the full tier (pytest -m slow)

timit = load_recipe("timit_am")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return small_corpus(tmp_path_factory.mktemp("timit"), utterances=4)


@pytest.fixture(scope="module")
def frame_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "frame"
    results = timit.main(["--timit-root", str(corpus), "--output-dir", str(out), "--preset", "tiny", "--epochs", "12"])
    return out, results


def test_frame_run_writes_results_model_and_curves(frame_run):
    out, results = frame_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["frame_accuracy"] == pytest.approx(results["frame_accuracy"])
    assert {"frame_accuracy", "per", "dev", "config", "wall_time_s", "versions", "num_processes"} <= set(on_disk)
    assert len(on_disk["dev"]) == 12 and on_disk["num_processes"] == 1
    assert sorted(p.name for p in (out / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert any((out / "features").glob("train-*.safetensors"))  # cached for the next epoch / run
    speed = on_disk["speed"]  # frames/s against the machine's GEMM-bound ceiling
    assert speed["units_per_sec"] == pytest.approx(12 * on_disk["train_frames"] / on_disk["train_time_s"], rel=1e-6)
    assert speed["efficiency"] == pytest.approx(speed["units_per_sec"] / speed["ceiling_units_per_sec"])


def test_it_learns_the_tones(frame_run):
    _, results = frame_run
    dev = results["dev"]
    # 7 phones, 5 classes on the 39 set: chance is far below; the tones are easy.
    assert dev[-1]["dev_frame_accuracy"] > dev[0]["dev_frame_accuracy"]
    assert results["frame_accuracy"] > 60.0
    assert results["per"] < 100.0


def test_eval_only_on_a_corpus_with_only_test_gives_the_same_scores(frame_run, corpus, tmp_path):
    out, results = frame_run
    shutil.copytree(corpus / "TEST", tmp_path / "TEST")
    again = timit.main(["--timit-root", str(tmp_path), "--eval-only", "--model", str(out / "model"),
                        "--output-dir", str(tmp_path / "scores")])
    assert again["frame_accuracy"] == pytest.approx(results["frame_accuracy"])
    assert again["per"] == pytest.approx(results["per"])
    assert json.loads((tmp_path / "scores" / "results.json").read_text())["per"] == pytest.approx(results["per"])


def test_ctc_run_and_its_eval_only_rescoring_agree_with_the_models_own_beam(corpus, tmp_path, monkeypatch):
    out = tmp_path / "ctc"
    results = timit.main(["--timit-root", str(corpus), "--output-dir", str(out), "--preset", "tiny",
                          "--objective", "ctc", "--epochs", "2"])
    assert "frame_accuracy" not in results and results["dev"][1]["dev_loss"] < results["dev"][0]["dev_loss"]
    assert json.loads((out / "model" / "config.json").read_text())["beam_size"] == 3  # the tiny preset's, not 8
    beams, score = [], timit.score_utterance

    def spy(*args):
        beams.append(args[-1])
        return score(*args)

    monkeypatch.setattr(timit, "score_utterance", spy)
    again = timit.main(["--timit-root", str(corpus), "--eval-only", "--model", str(out / "model")])
    assert set(beams) == {3} and again["per"] == results["per"] and again["loss"] == pytest.approx(results["loss"])


def test_seed_fixes_the_result(corpus, tmp_path):
    runs = [timit.main(["--timit-root", str(corpus), "--output-dir", str(tmp_path / f"r{i}"), "--preset", "tiny",
                        "--max-steps", "5", "--seed", "3"]) for i in range(2)]
    assert runs[0]["loss"] == runs[1]["loss"] and runs[0]["per"] == runs[1]["per"]


def test_frame_loss_is_cross_entropy_over_labelled_frames():
    torch.manual_seed(0)
    model = AcousticModel(AcousticModelConfig(input_size=6, hidden_size=8, num_layers=2, objective="frame"))
    logits = torch.randn(3, 2, 48)  # hand-made, not the model's: (T, B, C)
    labels = torch.tensor([[5, IGNORE], [47, 0], [IGNORE, IGNORE]])  # q frames and padding are IGNORE
    loss, count = model.loss(logits, torch.tensor([3, 2]), labels, torch.zeros(2, 1, dtype=torch.long),
                             torch.tensor([1, 1]))
    log_p = torch.log_softmax(logits, dim=-1)
    expected = -(log_p[0, 0, 5] + log_p[1, 0, 47] + log_p[1, 1, 0])
    assert count == 3 and torch.allclose(loss, expected, atol=1e-6)
    assert model(torch.randn(9, 3, 6), torch.tensor([9, 7, 4])).shape == (9, 3, 48)


def brute_force_ctc(log_probs, phones):
    """-log of the summed probability of every frame path that collapses to `phones` (0-based), blank = class 0."""
    T, C = log_probs.shape
    target = [p + 1 for p in phones]  # phone k is class k + 1: class 0 is the blank
    total = []
    for path in itertools.product(range(C), repeat=T):
        merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
        if [c for c in merged if c != 0] == target:
            total.append(sum(log_probs[t, c] for t, c in enumerate(path)))
    return -torch.logsumexp(torch.stack(total), dim=0)


def test_ctc_loss_is_the_sum_over_alignments_with_the_blank_first():
    torch.manual_seed(0)
    model = AcousticModel(AcousticModelConfig(input_size=6, hidden_size=8, num_layers=2, objective="ctc"))
    assert model(torch.randn(9, 3, 6), torch.tensor([9, 7, 4])).shape == (9, 3, 49)
    logits = torch.randn(5, 2, 49)
    logits[:, :, 4:] = -30.0  # only the blank and phones 0-2 carry weight, so 4^5 paths cover the mass
    phones, phone_lengths, lengths = torch.tensor([[0, 2, 2], [1, 0, 0]]), torch.tensor([3, 1]), torch.tensor([5, 3])
    loss, count = model.loss(logits, lengths, torch.zeros(5, 2, dtype=torch.long), phones, phone_lengths)
    log_p = torch.log_softmax(logits.double(), dim=-1)[:, :, :4]
    expected = brute_force_ctc(log_p[:5, 0], [0, 2, 2]) + brute_force_ctc(log_p[:3, 1], [1])
    assert count == 2 and loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--timit-root", "{tmp}/nowhere"], "no such directory"),
    (["--timit-root", "{tmp}"], "not a TIMIT layout"),
    (["--timit-root", "{tmp}", "--eval-only"], "--eval-only needs --model"),
    (["--timit-root", "{tmp}", "--eval-only", "--model", "{tmp}", "--epochs", "3", "--dropout", "0.1"],
     "--eval-only scores a model with its own settings; --dropout, --epochs would be ignored"),
    (["--timit-root", "{tmp}", "--dropout", "1.5"], "must be in [0, 1)"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "timit_am.py"), *args, "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
