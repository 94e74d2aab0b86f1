import pytest

from seq2seq.language_model import LanguageModel
from seq2seq.presets import LM_PRESETS, zaremba_large, zaremba_medium, zaremba_small
from seq2seq.schedule import step_decay_lr


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
