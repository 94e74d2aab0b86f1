"""Loss regression, in the torchtune manner: the first training losses of each tiny preset's model for a fixed
seed, on fixed synthetic batches, with the preset's optimiser, lr and clipping. A change that alters the
numbers (initialisation, dropout placement, the loss, the update) shows here; one that is meant to must
update the values below and say why in its commit."""

import dataclasses

import pytest
import torch

from seq2seq.acoustic_model import AcousticModel
from seq2seq.language_model import LanguageModel
from seq2seq.presets import ACOUSTIC_PRESETS, LM_PRESETS, TRANSLATION_PRESETS
from seq2seq.speech.features import IGNORE
from seq2seq.tokenizer import BOS, EOS, PAD
from seq2seq.translator import Translator

STEPS = 6


def update(model, optimizer, loss, max_grad_norm: float) -> float:
    """One update as the recipes make it: backward, clip the global norm, step."""
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


def ptb_losses() -> list[float]:
    preset = LM_PRESETS["tiny"]()
    torch.manual_seed(0)
    model = LanguageModel(dataclasses.replace(preset.model, vocab_size=40)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=preset.training.lr)
    stream = torch.randint(0, 40, (preset.training.unroll * STEPS + 1, preset.training.batch_size),
                           generator=torch.Generator().manual_seed(1))
    losses, state = [], None
    for step in range(STEPS):
        window = stream[step * preset.training.unroll : (step + 1) * preset.training.unroll + 1]  # (T + 1, B)
        state = None if state is None else tuple(s.detach() for s in state)
        nll, state = model(window[:-1], state, window[1:])
        losses.append(update(model, optimizer, nll / window.shape[1], preset.training.max_grad_norm))
    return losses


def translation_losses() -> list[float]:
    preset = TRANSLATION_PRESETS["tiny"]()
    torch.manual_seed(0)
    model = Translator(dataclasses.replace(preset.model, src_vocab_size=30, tgt_vocab_size=30)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.training.lr)
    generator, losses = torch.Generator().manual_seed(1), []
    for _ in range(STEPS):
        src = torch.randint(4, 30, (7, 5), generator=generator)  # (S, B)
        lengths = torch.tensor([7, 6, 5, 3, 2])
        src[lengths.unsqueeze(0) <= torch.arange(7).unsqueeze(1)] = PAD
        body = torch.randint(4, 30, (6, 5), generator=generator)  # (T, B)
        tgt_in, tgt_out = torch.cat([torch.full((1, 5), BOS), body]), torch.cat([body, torch.full((1, 5), EOS)])
        loss, count = model(src, lengths, tgt_in, tgt_out, preset.training.label_smoothing)
        losses.append(update(model, optimizer, loss / count, preset.training.max_grad_norm))
    return losses


def timit_losses() -> list[float]:
    preset = ACOUSTIC_PRESETS["tiny"]()
    torch.manual_seed(0)
    model = AcousticModel(preset.model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.training.lr)
    generator, losses = torch.Generator().manual_seed(1), []
    for _ in range(STEPS):
        features, lengths = torch.randn(12, 2, preset.model.input_size, generator=generator), torch.tensor([12, 9])
        labels = torch.randint(0, 48, (12, 2), generator=generator)
        labels[9:, 1] = IGNORE
        logits = model(features, lengths)
        no_phones = torch.zeros(2, 1, dtype=torch.long), torch.ones(2, dtype=torch.long)  # unused by the frame loss
        loss, count = model.loss(logits, lengths, labels, *no_phones)
        losses.append(update(model, optimizer, loss / count, preset.training.max_grad_norm))
    return losses


EXPECTED = {
    "ptb_lm": (ptb_losses, [18.218752, 18.427679, 19.435915, 18.50145, 19.268391, 18.449413]),
    "wmt14_enfr": (translation_losses, [3.454671, 3.430019, 3.379639, 3.373846, 3.382654, 3.330311]),
    "timit_am": (timit_losses, [3.878601, 3.878379, 3.864668, 3.862233, 3.884764, 3.875778]),
}


@pytest.mark.parametrize("recipe", EXPECTED)
def test_the_first_losses_of_each_tiny_preset_are_unchanged(recipe):
    run, expected = EXPECTED[recipe]
    assert run() == pytest.approx(expected, rel=1e-4)
