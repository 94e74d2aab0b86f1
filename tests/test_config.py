"""Configuration without editing code: preset, then file, then --set, checked against the dataclasses."""

import dataclasses
import json

import pytest

from seq2seq.config import resolve, to_yaml
from seq2seq.errors import UserError
from seq2seq.presets import ACOUSTIC_PRESETS, LM_PRESETS, TRANSLATION_PRESETS

EVERY_PRESET = [(name, make) for presets in (LM_PRESETS, TRANSLATION_PRESETS, ACOUSTIC_PRESETS)
                for name, make in presets.items()]


def test_set_overrides_nested_fields_with_their_types():
    demo = TRANSLATION_PRESETS["demo"]()
    resolved = resolve(demo, None, ["training.lr=0.002", "model.hidden_size=128", "model.embedding_size=128",
                                    "data.src_lang=de", "data.max_train_pairs=null", "decoding.beam_size=12",
                                    "training.warmup_steps=0", "training.halve_from=5", "data.data_files=[a.json]"])
    assert resolved.training.lr == 0.002 and resolved.model.hidden_size == 128 and resolved.data.src_lang == "de"
    assert resolved.decoding.beam_size == 12 and resolved.data.max_train_pairs is None
    assert isinstance(resolved.training.halve_from, float) and resolved.data.data_files == ("a.json",)
    assert resolved.training.epochs == demo.training.epochs and resolved.model.attention == demo.model.attention


def test_a_later_override_wins_and_a_file_comes_first(tmp_path):
    (tmp_path / "c.yaml").write_text("training:\n  lr: 0.5\n  epochs: 3\nmodel:\n  dropout: 0.3\n")
    resolved = resolve(LM_PRESETS["small"](), tmp_path / "c.yaml", ["training.lr=0.25", "training.lr=0.125"])
    assert (resolved.training.lr, resolved.training.epochs, resolved.model.dropout) == (0.125, 3, 0.3)
    (tmp_path / "c.json").write_text(json.dumps({"training": {"lr": 0.5}}))  # JSON is YAML too
    assert resolve(LM_PRESETS["small"](), tmp_path / "c.json").training.lr == 0.5


@pytest.mark.parametrize("overrides, message", [
    (["training.lrr=0.1"], "--set training.lrr=0.1: unknown key 'training.lrr'"),
    (["modle.hidden_size=3"], "unknown key 'modle'"),
    (["training.lr=fast"], "--set training.lr=fast: training.lr must be a number, got 'fast'"),
    (["training.eval_every=2.5"], "training.eval_every must be an integer, got 2.5"),
    (["model.attention=1"], "model.attention must be true or false, got 1"),
    (["training=3"], "training is a group of fields; give them as training.FIELD"),
    (["training.lr"], "expected KEY=VALUE"),
    (["model.hidden_size=128"], "tie_embeddings needs embedding_size == hidden_size"),
    (["model.dropout_mode=zarembo"], "dropout_mode must be one of"),
])
def test_a_bad_key_or_value_is_one_line_naming_it(overrides, message):
    with pytest.raises(UserError) as refused:
        resolve(TRANSLATION_PRESETS["demo"](), None, overrides)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_bad_file_is_named(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="expected a mapping of fields, got a list"):
        resolve(LM_PRESETS["small"](), tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("training: {lr: [\n")
    with pytest.raises(UserError, match="not valid YAML or JSON"):
        resolve(LM_PRESETS["small"](), tmp_path / "broken.yaml")
    with pytest.raises(UserError, match="no such file"):
        resolve(LM_PRESETS["small"](), tmp_path / "missing.yaml")


@pytest.mark.parametrize("name, make", EVERY_PRESET, ids=[f"{m.__module__}.{m.__name__}" for _, m in EVERY_PRESET])
def test_every_preset_round_trips_through_its_yaml(tmp_path, name, make):
    preset = make()
    (tmp_path / "config.yaml").write_text(to_yaml(preset))
    assert resolve(dataclasses.replace(preset, name="other"), tmp_path / "config.yaml") == preset
