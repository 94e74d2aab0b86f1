"""The hand-differentiated masked LSTM recurrence against autograd through the equations."""

import pytest
import torch

from seq2seq.recurrence import MaskedLSTMRecurrence

T, D, B, U = 5, 2, 3, 4


def autograd_loop(x_proj, w_hh, h0, c0, h_mask):
    """The same recurrence step by step, differentiated by autograd: hs, cs (T, D, B, u)."""
    h, c, hs, cs = h0, c0, [], []
    for t in range(x_proj.shape[0]):
        h_in = h if h_mask is None else h * h_mask[t if h_mask.shape[0] > 1 else 0]
        gates = x_proj[t] + torch.bmm(h_in, w_hh.transpose(1, 2))
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    return torch.stack(hs), torch.stack(cs)


def inputs(mask_steps, directions=D, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype)  # noqa: E731
    x_proj = rand(T, directions, B, 4 * U).requires_grad_()
    w_hh = (rand(directions, 4 * U, U) * 0.5).requires_grad_()
    h0, c0 = rand(directions, B, U).requires_grad_(), rand(directions, B, U).requires_grad_()
    mask = None
    if mask_steps:
        keep = torch.rand(mask_steps, directions, B, U, generator=generator) < 0.6
        mask = keep.to(dtype) / 0.6
    return x_proj, w_hh, h0, c0, mask


@pytest.mark.parametrize("mask_steps", [0, 1, T])
@pytest.mark.parametrize("directions", [1, 2])
def test_gradients_pass_gradcheck(mask_steps, directions):
    assert torch.autograd.gradcheck(MaskedLSTMRecurrence.apply, inputs(mask_steps, directions))


@pytest.mark.parametrize("mask_steps", [0, 1, T])
@pytest.mark.parametrize("used", ["both", "hs", "last c"])
def test_values_and_gradients_equal_autograd_through_the_equations(mask_steps, used):
    x_proj, w_hh, h0, c0, mask = inputs(mask_steps)
    weights = torch.randn(T, D, B, U, dtype=torch.float64)

    def loss(hs, cs):
        return {"both": (hs * weights).sum() + cs.square().sum(), "hs": (hs * weights).sum(),
                "last c": cs[-1].sum()}[used]

    hs, cs = MaskedLSTMRecurrence.apply(x_proj, w_hh, h0, c0, mask)
    ours = torch.autograd.grad(loss(hs, cs), (x_proj, w_hh, h0, c0))
    hs_ref, cs_ref = autograd_loop(x_proj, w_hh, h0, c0, mask)
    theirs = torch.autograd.grad(loss(hs_ref, cs_ref), (x_proj, w_hh, h0, c0))
    torch.testing.assert_close(hs, hs_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cs, cs_ref, rtol=1e-12, atol=1e-12)
    for grad, grad_ref in zip(ours, theirs):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)


def test_masked_units_pass_no_gradient_to_the_state_they_read():
    x_proj, w_hh, h0, c0, _ = inputs(0)
    mask = torch.ones(1, D, B, U, dtype=torch.float64)
    mask[0, 0, 1, 2] = 0  # unit 2 of sequence 1 never reaches the gates
    hs, _ = MaskedLSTMRecurrence.apply(x_proj, w_hh, h0, c0, mask)
    (grad_h0,) = torch.autograd.grad(hs[0].sum(), h0)
    assert grad_h0[0, 1, 2] == 0 and bool((grad_h0.flatten()[grad_h0.flatten() != 0]).numel() == D * B * U - 1)


def test_bf16_autocast_runs_the_products_in_bf16_and_keeps_state_and_gradients_fp32():
    x_proj, w_hh, h0, c0, mask = (None if t is None else t.detach().float().requires_grad_(t.requires_grad)
                                    for t in inputs(T, dtype=torch.float64))
    hs32, cs32 = MaskedLSTMRecurrence.apply(x_proj, w_hh, h0, c0, mask)
    grads32 = torch.autograd.grad(hs32.sum() + cs32.sum(), (x_proj, w_hh, h0, c0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_bf16 = x_proj.to(torch.bfloat16)  # what autocast's linear hands the loop
        hs, cs = MaskedLSTMRecurrence.apply(x_bf16, w_hh, h0, c0, mask)
    grads = torch.autograd.grad(hs.sum() + cs.sum(), (x_proj, w_hh, h0, c0))
    assert hs.dtype == cs.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.float32] * 4
    torch.testing.assert_close(hs, hs32, rtol=0, atol=0.05)
    for grad, grad32 in zip(grads, grads32):
        scale = grad32.abs().max()
        assert (grad - grad32).abs().max() < 0.05 * scale
