"""The TIMIT recipe end to end on a generated TIMIT-layout corpus: train, score, reload, score again."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, load_recipe
from timit_corpus import small_corpus

from seq2seq.acoustic_model import AcousticModel, AcousticModelConfig

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


def test_ctc_run_reports_per(corpus, tmp_path):
    results = timit.main(["--timit-root", str(corpus), "--output-dir", str(tmp_path / "ctc"), "--preset", "tiny",
                          "--objective", "ctc", "--epochs", "2"])
    assert "frame_accuracy" not in results and results["per"] >= 0.0  # insertions can push PER past 100
    dev = results["dev"]
    assert len(dev) == 2 and dev[1]["dev_loss"] < dev[0]["dev_loss"]


def test_seed_fixes_the_result(corpus, tmp_path):
    runs = [timit.main(["--timit-root", str(corpus), "--output-dir", str(tmp_path / f"r{i}"), "--preset", "tiny",
                        "--max-steps", "5", "--seed", "3"]) for i in range(2)]
    assert runs[0]["loss"] == runs[1]["loss"] and runs[0]["per"] == runs[1]["per"]


def test_model_shapes_and_losses():
    torch.manual_seed(0)
    for objective, classes in (("frame", 48), ("ctc", 49)):
        model = AcousticModel(AcousticModelConfig(input_size=6, hidden_size=8, num_layers=2, objective=objective))
        features, lengths = torch.randn(9, 3, 6), torch.tensor([9, 7, 4])
        logits = model(features, lengths)
        assert logits.shape == (9, 3, classes)
        labels = torch.randint(0, 48, (9, 3))
        phones, phone_lengths = torch.randint(0, 48, (3, 3)), torch.tensor([3, 2, 1])
        loss, count = model.loss(logits, lengths, labels, phones, phone_lengths)
        assert torch.isfinite(loss) and count == (27 if objective == "frame" else 3)


@pytest.mark.parametrize("args, message", [
    (["--timit-root", "{tmp}/nowhere"], "no such directory"),
    (["--timit-root", "{tmp}"], "not a TIMIT layout"),
    (["--timit-root", "{tmp}", "--eval-only"], "--eval-only needs --model"),
    (["--timit-root", "{tmp}", "--dropout", "1.5"], "must be in [0, 1)"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "timit_am.py"), *args, "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
