"""The recipes configured from the command line: --preset, --config FILE, --set, --print-config, OUTPUT/config.yaml."""

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, load_recipe
from recipe_runs import recipe_args
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # whole recipes, subprocesses: the full tier (pytest -m slow)

ptb_lm, wmt, timit = load_recipe("ptb_lm"), load_recipe("wmt14_enfr"), load_recipe("timit_am")
OVERRIDES = ["--set", "training.lr=0.002", "--set", "model.hidden_size=128", "--set", "model.embedding_size=128"]


def test_print_config_shows_the_overrides_and_a_file_does_the_same(tmp_path, capsys):
    assert wmt.main(["--preset", "demo", *OVERRIDES, "--print-config"]) is None
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["training"]["lr"] == 0.002 and config["model"]["hidden_size"] == 128 and config["name"] == "demo"
    assert config["decoding"]["beam_size"] == 5  # the rest is the preset's
    (tmp_path / "mine.yaml").write_text("training:\n  lr: 0.002\nmodel:\n  hidden_size: 128\n  embedding_size: 128\n")
    assert wmt.main(["--preset", "demo", "--config", str(tmp_path / "mine.yaml"), "--print-config"]) is None
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize("recipe, extra, message", [
    ("wmt14_enfr", ["--set", "training.lrr=0.1"], "--set training.lrr=0.1: unknown key 'training.lrr'"),
    ("ptb_lm", ["--set", "model.hidden_size=big"], "model.hidden_size must be an integer, got 'big'"),
    ("timit_am", ["--set", "features.num_bins=4.5"], "features.num_bins must be an integer, got 4.5"),
])
def test_a_typo_or_wrong_type_exits_2_naming_the_key(tmp_path, recipe, extra, message):
    args = recipe_args(recipe, tmp_path / "data")
    done = subprocess.run([sys.executable, *args, *extra, "--output-dir", str(tmp_path / "o"), "--print-config"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_runs_config_yaml_reruns_it_exactly(tmp_path):
    args = recipe_args("ptb_lm", tmp_path / "data")[1:]
    first = ptb_lm.main([*args, "--output-dir", str(tmp_path / "a"), "--set", "training.lr=0.5", "--dropout", "0.2",
                         "--seed", "3"])
    written = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert written["training"]["lr"] == 0.5 and written["model"]["dropout"] == 0.2 and written == first["config"]
    again = ptb_lm.main(["--data-dir", str(tmp_path / "data"), "--config", str(tmp_path / "a" / "config.yaml"),
                         "--output-dir", str(tmp_path / "b"), "--seed", "3"])
    assert again["config"] == first["config"] and again["test_ppl"] == first["test_ppl"]
    weights = [load_file(tmp_path / run / "model" / "model.safetensors") for run in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all(bool((weights[0][k] == weights[1][k]).all()) for k in weights[0])


def test_ptb_config_naming_a_preset_still_works_with_a_notice(tmp_path, capsys):
    assert ptb_lm.main(["--config", "medium", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "o"),
                        "--print-config"]) is None
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["model"]["hidden_size"] == 650
    assert "--config medium is deprecated; it means --preset medium" in captured.err
