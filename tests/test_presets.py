import dataclasses

import pytest
import torch

from seq2seq.acoustic_model import AcousticModel
from seq2seq.language_model import LanguageModel
from seq2seq.presets import (ACOUSTIC_PRESETS, LM_PRESETS, TRANSLATION_PRESETS, zaremba_large, zaremba_medium,
                             zaremba_small)
from seq2seq.schedule import halving_lr, linear_lr, step_decay_lr
from seq2seq.translator import Translator


@pytest.mark.parametrize("name", LM_PRESETS)
def test_every_preset_builds(name):
    preset = LM_PRESETS[name]()
    assert preset.name == name
    model = LanguageModel(preset.model)
    h = preset.model.hidden_size
    lstm = 2 * (4 * h * (h + h) + 2 * 4 * h)  # two layers, embedding size = hidden size, two biases each
    assert sum(p.numel() for p in model.parameters()) == lstm + 2 * preset.model.vocab_size * h + preset.model.vocab_size


@pytest.mark.parametrize("preset, row", [
    (zaremba_small, (200, 0.1, 1.0, 2.0, 4, 13, 5.0, 20, 20, 0.0, 114.5)),
    (zaremba_medium, (650, 0.05, 1.0, 1.2, 6, 39, 5.0, 35, 20, 0.5, 82.7)),
    (zaremba_large, (1500, 0.04, 1.0, 1.15, 14, 55, 10.0, 35, 20, 0.65, 78.4)),
])
def test_presets_are_the_papers_table(preset, row):
    p = preset()
    t, m = p.training, p.model
    assert (m.hidden_size, m.init_scale, t.lr, t.lr_decay, t.decay_after, t.epochs, t.max_grad_norm,
            t.unroll, t.batch_size, m.dropout, p.paper_test_ppl) == row
    assert m.num_layers == 2 and m.vocab_size == 10000 and m.dropout_mode == "zaremba"


def test_step_decay_follows_the_lua_code():
    lrs = [step_decay_lr(e, 1.0, 2.0, 4) for e in range(1, 14)]
    assert lrs[:5] == [1.0] * 5
    assert lrs[5] == 0.5 and lrs[12] == 1 / 256
    assert step_decay_lr(8, 1.0, 1.2, 6) == pytest.approx(1 / 1.2)


@pytest.mark.parametrize("name", TRANSLATION_PRESETS)
def test_every_translation_preset_builds(name):
    preset = TRANSLATION_PRESETS[name]()
    config = dataclasses.replace(preset.model, src_vocab_size=32000, tgt_vocab_size=32000)
    with torch.device("meta"):  # the paper's 4 x 1000 model's shapes without its 1 GB of weights
        model = Translator(config)
    assert preset.name == name and model.encoder.num_layers == model.decoder.num_layers == config.num_layers
    assert model.output.weight.shape == (32000, config.hidden_size)
    assert preset.decoding.beam_size >= 1 and preset.training.epochs > 0


@pytest.mark.parametrize("name", ACOUSTIC_PRESETS)
def test_every_acoustic_preset_builds(name):
    preset = ACOUSTIC_PRESETS[name]()
    assert preset.name == name and preset.model.input_size == preset.features.dim
    model = AcousticModel(preset.model)
    assert model(torch.randn(5, 2, preset.features.dim), torch.tensor([5, 3])).shape == (5, 2, preset.model.num_classes)


def test_halving_follows_sutskever_et_al():
    """Sec. 3.4: halving every half epoch after 5 epochs (the paper preset: lr 0.7, 7.5 epochs)."""
    lrs = [halving_lr(epoch, 0.7, 5.0) for epoch in (0.0, 4.99, 5.0, 5.49, 5.5, 6.0, 7.49)]
    assert lrs == pytest.approx([0.7, 0.7, 0.35, 0.35, 0.175, 0.0875, 0.7 / 2 ** 5])
    paper = TRANSLATION_PRESETS["paper"]().training
    assert (paper.schedule, paper.lr, paper.halve_from, paper.epochs) == ("halving", 0.7, 5.0, 7.5)


def test_linear_warmup_then_decay_to_zero():
    lrs = [linear_lr(step, 1.0, warmup_steps=4, total_steps=12) for step in range(13)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # step s of warm-up uses (s + 1) / warmup
    assert lrs[4:] == pytest.approx([1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0])
    assert linear_lr(20, 1.0, 4, 12) == 0.0  # never negative past the end
