"""seq2seq.clipping against torch.nn.utils.clip_grad_norm_: the same norm and the same gradients, bit for bit,
whether or not the norm is over the limit; and below it, the gradients are not written at all."""

import math

import pytest
import torch
from torch import nn

from seq2seq.clipping import clip_grad_norm


def model_with_gradients(scale: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(50, 8), nn.LSTM(8, 16))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    model[0].weight.grad[7] = 0.0  # a row no batch touched
    return model


@pytest.mark.parametrize("scale", [1e-3, 0.05, 1.0, 30.0])
def test_same_norm_and_gradients_as_torch(scale):
    ours, theirs = model_with_gradients(scale), model_with_gradients(scale)
    norm = clip_grad_norm(ours.parameters(), 5.0)
    expected = nn.utils.clip_grad_norm_(theirs.parameters(), 5.0)
    assert torch.equal(norm, expected)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a.grad, b.grad)
    total = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ours.parameters()))
    assert total == pytest.approx(min(float(expected), 5.0), rel=1e-5)


def test_within_the_limit_the_gradients_are_not_written():
    model = model_with_gradients(1e-3)
    before = [(p.grad._version, p.grad.clone()) for p in model.parameters()]
    norm = clip_grad_norm(model.parameters(), 5.0)
    assert float(norm) < 5.0
    for p, (version, grad) in zip(model.parameters(), before):
        assert p.grad._version == version and torch.equal(p.grad, grad)


def test_over_the_limit_every_gradient_is_scaled():
    model = model_with_gradients(30.0)
    before = [p.grad.clone() for p in model.parameters()]
    norm = float(clip_grad_norm(model.parameters(), 5.0))
    assert norm > 5.0
    for p, grad in zip(model.parameters(), before):
        assert torch.allclose(p.grad, grad * (5.0 / (norm + 1e-6)), rtol=1e-6, atol=0)


def test_parameters_without_gradients_are_skipped_and_a_nan_norm_is_returned():
    model = model_with_gradients(1.0)
    model[1].weight_hh_l0.grad = None
    model[0].weight.grad[0, 0] = float("nan")
    assert math.isnan(float(clip_grad_norm(model.parameters(), 5.0)))
    assert model[1].weight_hh_l0.grad is None
