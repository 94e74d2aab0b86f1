"""The roofline's arithmetic: FLOP counts of a step against hand counts, and ceilings that add up."""

import pytest

from seq2seq.roofline import (Product, ceiling_seconds, cold_seconds, language_model_step, linear, lstm_layer,
                              measured_rate, products_of, rate, translator_step)


def test_ptb_small_step_is_the_papers_arithmetic():
    """2 x 200, batch 20, unroll 20, 10k words: softmax 3 x 2 x 400 x 200 x 10,000 = 4.8 GFLOP; each LSTM layer
    3 x 2 x 400 x 200 x 800 for W_ih and the same again for W_hh over 20 steps: 6.336 GFLOP in all."""
    products = language_model_step(batch=20, unroll=20, hidden=200, layers=2, vocab=10_000)
    assert sum(p.flops() for p in linear(400, 200, 10_000)) == 4.8e9
    assert sum(p.flops() for p in products) == pytest.approx(6.336e9)
    assert sum(p.flops() for p in lstm_layer(20, 20, 200, 200, backward=False)) == 2 * 2 * 400 * 200 * 800


def test_a_bidirectional_layer_counts_both_directions_and_inference_only_the_forward():
    one = sum(p.flops() for p in lstm_layer(10, 4, 8, 6, directions=1))
    assert sum(p.flops() for p in lstm_layer(10, 4, 8, 6, directions=2)) == 2 * one
    assert sum(p.flops() for p in lstm_layer(10, 4, 8, 6, backward=False)) * 3 == one
    attention = sum(p.flops() for p in translator_step(2, 5, 7, 8, 8, 1, 30, attention=True))
    assert attention > sum(p.flops() for p in translator_step(2, 5, 7, 8, 8, 1, 30, attention=False))


def test_the_ceiling_is_the_sum_of_each_products_own_time():
    measured_rate.cache_clear()
    big, small = Product(256, 256, 256), Product(4, 64, 256, times=50)
    assert rate(256, 256, 256) > 0 and rate(4, 64, 256) > 0
    both = ceiling_seconds([big, small])
    assert both == pytest.approx(big.flops() / rate(256, 256, 256) + small.flops() / rate(4, 64, 256))
    assert ceiling_seconds([big, big]) == pytest.approx(2 * ceiling_seconds([big]))
    assert ceiling_seconds([Product(256, 256, 256, times=3)]) == pytest.approx(3 * ceiling_seconds([big]))


def test_a_lower_precision_ceiling_counts_each_product_at_its_faster_precision():
    """bf16 allowed: every product at the faster of its fp32 and bf16 rates (measured on this machine), so the
    ceiling is never above either precision's own."""
    import torch
    measured_rate.cache_clear()
    products = [Product(256, 256, 1024), Product(5, 256, 20, times=64)]
    mixed = ceiling_seconds(products, torch.bfloat16)
    best = sum(p.flops() / max(rate(p.m, p.k, p.n), rate(p.m, p.k, p.n, torch.bfloat16)) for p in products)
    assert mixed == pytest.approx(best)
    assert mixed <= ceiling_seconds(products) * (1 + 1e-9)
    assert mixed <= sum(p.flops() / rate(p.m, p.k, p.n, torch.bfloat16) for p in products) * (1 + 1e-9)


def test_products_of_lstm_layers_are_marked_apart_from_the_linear_layers():
    """--breakdown compares oneDNN's LSTM kernels with the LSTM products and the rest with the other products."""
    products = language_model_step(batch=20, unroll=20, hidden=200, layers=2, vocab=10_000)
    assert all(p.lstm for p in lstm_layer(20, 20, 200, 200)) and not any(p.lstm for p in linear(400, 200, 10_000))
    assert sum(p.flops() for p in products if not p.lstm) == 4.8e9
    assert sum(p.flops() for p in products if p.lstm) == pytest.approx(2 * 3 * 2 * 2 * 400 * 200 * 800)
    step = translator_step(2, 5, 7, 8, 8, 2, 30)
    assert sum(p.lstm for p in step) == 2 * 2 * 6  # encoder and decoder, 2 layers, 6 products each


def test_a_cold_product_is_timed_once_per_flush_and_a_repeated_one_at_its_cached_rate():
    measured_rate.cache_clear()
    repeated = Product(4, 64, 256, times=50)
    assert cold_seconds(repeated) == pytest.approx(repeated.flops() / rate(4, 64, 256))
    big = Product(512, 512, 512)
    cold, cached = cold_seconds(big, repeats=3), big.flops() / rate(512, 512, 512)
    assert 0.5 * cached < cold < 1.0  # one real product each time: not a no-op, not a pause


def test_the_recurrent_weights_gradient_is_one_product_over_all_steps():
    """dW_hh = sum_t dG_t^T h_{t-1} needs no step before it: one (4u, T*B) @ (T*B, u) product, not T small ones;
    the products that do (h_{t-1} W_hh^T forward, dG_t W_hh backward) stay one per step."""
    forward, input_grad, weight_grad, step, step_grad, recurrent_weight_grad = lstm_layer(20, 20, 200, 300, 2)
    assert recurrent_weight_grad == Product(1200, 400, 300, times=2, lstm=True)
    assert step == Product(20, 300, 1200, times=40, lstm=True) and step_grad == Product(20, 1200, 300, 40, True)
    assert weight_grad == Product(1200, 400, 200, times=2, lstm=True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_gemm_library_timed_computes_the_same_product(dtype):
    """The rate is the faster library's, so each one timed must be doing a @ b (to its precision's rounding)."""
    import torch
    dtype = getattr(torch, dtype)
    a, b = torch.randn(20, 96).to(dtype), torch.randn(96, 130).to(dtype)
    expected, tolerance = a.double() @ b.double(), {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    multiplies = products_of(a, b)
    assert len(multiplies) == 2 if dtype == torch.float32 and torch.backends.mkldnn.is_available() else multiplies
    for multiply in multiplies:
        result = multiply()
        assert result.shape == (20, 130) and result.dtype == dtype
        assert torch.allclose(result.double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max())
