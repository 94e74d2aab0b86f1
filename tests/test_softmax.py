"""The fused softmax layer + loss against nn.functional's unfused composition."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq.softmax import linear_cross_entropy


def both(n, hidden, vocab, seed, scale=1.0):
    torch.manual_seed(seed)
    h = (torch.randn(n, hidden) * scale).requires_grad_(True)
    weight = torch.randn(vocab, hidden).requires_grad_(True)
    bias = torch.randn(vocab).requires_grad_(True)
    targets = torch.randint(0, vocab, (n,))
    fused = linear_cross_entropy(h, weight, bias, targets)
    grads = torch.autograd.grad(fused * 0.5, (h, weight, bias))
    plain = F.cross_entropy(F.linear(h, weight, bias), targets, reduction="sum")
    plain_grads = torch.autograd.grad(plain * 0.5, (h, weight, bias))
    return fused, grads, plain, plain_grads


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), hidden=st.integers(1, 16), vocab=st.integers(2, 50), seed=st.integers(0, 10_000))
def test_value_and_gradients_equal_unfused(n, hidden, vocab, seed):
    fused, grads, plain, plain_grads = both(n, hidden, vocab, seed)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-4)
    for g, g_plain in zip(grads, plain_grads):
        torch.testing.assert_close(g, g_plain, rtol=1e-5, atol=1e-5)


def test_stable_for_huge_logits():
    fused, grads, plain, plain_grads = both(8, 4, 30, seed=3, scale=1e4)
    assert torch.isfinite(fused) and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-2)


def test_uniform_logits_give_log_vocab_per_row():
    h = torch.zeros(5, 3)
    loss = linear_cross_entropy(h, torch.zeros(7, 3), torch.zeros(7), torch.arange(5))
    torch.testing.assert_close(loss, torch.tensor(5 * torch.log(torch.tensor(7.0)).item()))


def test_bf16_autocast_runs_products_in_bf16_and_stays_close():
    fused_fp32, _, _, _ = both(16, 8, 40, seed=5)
    torch.manual_seed(5)
    h = torch.randn(16, 8, requires_grad=True)
    weight = torch.randn(40, 8, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)
    targets = torch.randint(0, 40, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, weight, bias, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and weight.grad.dtype == torch.float32
    torch.testing.assert_close(loss, fused_fp32.detach(), rtol=2e-2, atol=0.5)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 30), vocab=st.integers(2, 40), smoothing=st.sampled_from([0.0, 0.1, 0.3]),
       seed=st.integers(0, 10_000))
def test_label_smoothing_and_ignore_index_equal_unfused(n, vocab, smoothing, seed):
    torch.manual_seed(seed)
    h = torch.randn(n, 6, requires_grad=True)
    weight = torch.randn(vocab, 6, requires_grad=True)
    bias = torch.randn(vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    targets[torch.rand(n) < 0.3] = 0  # 0 plays <pad>
    fused = linear_cross_entropy(h, weight, bias, targets, label_smoothing=smoothing, ignore_index=0)
    grads = torch.autograd.grad(fused, (h, weight, bias))
    plain = F.cross_entropy(F.linear(h, weight, bias), targets, reduction="sum",
                            label_smoothing=smoothing, ignore_index=0)
    plain_grads = torch.autograd.grad(plain, (h, weight, bias))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-4)
    for g, g_plain in zip(grads, plain_grads):
        torch.testing.assert_close(g, g_plain, rtol=1e-5, atol=1e-5)
