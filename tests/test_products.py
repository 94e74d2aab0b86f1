"""Search's matrix products in a lower precision (seq2seq.products): fp32 untouched, bf16 products with fp32
around them, weights cast once and again only when they change."""

import pytest
import torch
from torch import nn

from seq2seq.products import Products, prepare_for_search
from seq2seq.search import beam_search
from seq2seq.shortlist import Shortlist
from seq2seq.translator import Translator, TranslatorConfig


def test_without_a_dtype_it_is_nn_linear_to_the_last_bit():
    torch.manual_seed(0)
    x, weight, bias, rows = torch.randn(7, 16), torch.randn(12, 16), torch.randn(12), torch.randn(7, 12)
    products = Products()
    assert torch.equal(products.linear(x, weight), nn.functional.linear(x, weight))
    assert torch.equal(products.linear(x, weight, bias), nn.functional.linear(x, weight, bias))
    assert torch.equal(products.linear(x, weight, rows), torch.addmm(rows, x, weight.t()))  # a bias per row
    assert products.weight(weight) is weight


def test_bf16_products_are_the_bf16_product_widened_then_biased_in_fp32():
    torch.manual_seed(1)
    x, weight, bias = torch.randn(9, 32), torch.randn(24, 32), torch.randn(24)
    out = Products(torch.bfloat16).linear(x, weight, bias)
    expected = (x.bfloat16() @ weight.bfloat16().t()).float() + bias
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    torch.testing.assert_close(out, nn.functional.linear(x, weight, bias), atol=0.25, rtol=0.02)


def test_a_weight_is_cast_once_and_again_after_it_changes():
    weight = nn.Parameter(torch.randn(8, 4))
    products = Products(torch.bfloat16)
    first = products.weight(weight)
    assert first.dtype == torch.bfloat16 and products.weight(weight) is first  # kept
    with torch.no_grad():
        weight.mul_(2)  # an optimiser step or load_state_dict changes it in place
    second = products.weight(weight)
    assert second is not first and torch.equal(second, (weight.detach() * 1).bfloat16())
    already = torch.randn(3, 4).bfloat16()
    assert products.weight(already) is already  # nothing to cast


def test_log_softmax_linear_without_a_dtype_is_the_eager_code_to_the_last_bit():
    """fp32 search: the product (Products.linear: seq2seq.gemm's), the shortlist mask per sentence, then
    torch.log_softmax, as Translator.step had them."""
    torch.manual_seed(2)
    x, weight, bias = torch.randn(6, 16), torch.randn(11, 16), torch.randn(11)
    mask = torch.zeros(2, 11).masked_fill(torch.rand(2, 11) < 0.3, float("-inf"))
    products = Products()
    logits = products.linear(x, weight, bias)
    assert torch.equal(products.log_softmax_linear(x, weight, bias), torch.log_softmax(logits, -1))
    masked = (logits.view(2, 3, 11) + mask.unsqueeze(1)).view(6, 11)
    assert torch.equal(products.log_softmax_linear(x, weight, bias, mask), torch.log_softmax(masked, -1))
    y = torch.randn(5, 7)
    assert torch.equal(products.tanh_(y.clone()), y.tanh())


def test_bf16_log_softmax_and_tanh_are_the_eager_bf16_ones_within_rounding():
    """bf16 search on a CPU: the compiled pass over the bf16 product (seq2seq.native), agreeing with widening it,
    adding bias and mask and calling torch.log_softmax; tanh_ the compiled approximation, in place."""
    torch.manual_seed(4)
    x, weight, bias = torch.randn(8, 32), torch.randn(40, 32), torch.randn(40)
    mask = torch.zeros(4, 40).masked_fill(torch.rand(4, 40) < 0.3, float("-inf"))
    products = Products(torch.bfloat16)
    logits = (x.bfloat16() @ weight.bfloat16().t()).float() + bias
    eager = torch.log_softmax((logits.view(4, 2, 40) + mask.unsqueeze(1)).view(8, 40), -1)
    found = products.log_softmax_linear(x, weight, bias, mask)
    assert found.dtype == torch.float32 and torch.equal(found.isinf(), eager.isinf())
    torch.testing.assert_close(found[eager.isfinite()], eager[eager.isfinite()], rtol=1e-6, atol=2e-6)
    y = torch.randn(5, 7) * 3
    z = y.clone()
    assert products.tanh_(z) is z
    torch.testing.assert_close(z, y.tanh(), rtol=0, atol=3e-7)


def small_translator(**changes):
    torch.manual_seed(3)
    config = TranslatorConfig(src_vocab_size=40, tgt_vocab_size=30, embedding_size=16, hidden_size=16, num_layers=2,
                              dropout=0.0, **({"attention": True} | changes))
    return Translator(config).eval()


@pytest.mark.parametrize("changes", [{}, {"input_feeding": True}, {"attention": False}])
def test_bf16_search_on_a_cpu_keeps_fp32_and_agrees_with_fp32_search(changes):
    model = small_translator(**changes)
    src = torch.randint(4, 40, (6, 3))
    lengths = torch.tensor([6, 4, 5])
    with torch.no_grad():
        reference = beam_search(model, src, lengths, beam_size=3, alpha=0.6)
        memory, state = model.encode(src, lengths)
        tokens = torch.tensor([2, 2, 2])
        exact, _ = model.step(tokens, state, memory)
        model = prepare_for_search(model, torch.device("cpu"), torch.bfloat16)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        low, new_state = model.step(tokens, state, memory)
        found = beam_search(model, src, lengths, beam_size=3, alpha=0.6)
    assert low.dtype == torch.float32 and new_state.h.dtype == torch.float32
    torch.testing.assert_close(low, exact, atol=0.05, rtol=0)  # only the products are rounded to bf16
    # one cast per weight, however many steps ran: W_hh of both layers, W_ih of layer 1 (layer 0's is tabled, but
    # for its input-feeding half), W_c, the output layer
    c = model.config
    assert len(model.products._casts) == 2 + 1 + c.input_feeding + c.attention + 1
    assert [len(hyps) for hyps in found] == [len(hyps) for hyps in reference]


def test_other_precisions_and_devices_cast_the_whole_model():
    model = prepare_for_search(small_translator(), torch.device("cpu"), torch.float32)
    assert model.products.dtype is None and all(p.dtype == torch.float32 for p in model.parameters())
    elsewhere = prepare_for_search(small_translator(), torch.device("meta"), torch.bfloat16)  # as on a GPU
    assert elsewhere.products.dtype is None and all(p.dtype == torch.bfloat16 for p in elsewhere.parameters())


def test_bf16_search_over_a_shortlist_uses_the_cast_output_layer():
    """The shortlist's rows of the output layer come from the bf16 cast; search over them agrees with the exact
    bf16 search where the shortlist lists everything."""
    model = prepare_for_search(small_translator(), torch.device("cpu"), torch.bfloat16)
    with torch.no_grad():
        model.output.bias[:2] = -1e4  # <pad>, <s>: never listed, so give them no mass in the full softmax either
    every = Shortlist(torch.arange(30).expand(40, -1).clone(), torch.arange(30))
    src, lengths = torch.randint(4, 40, (5, 2)), torch.tensor([5, 3])
    with torch.no_grad():
        output = model.output_slice(*every.candidates(src, lengths))
        listed = beam_search(model, src, lengths, beam_size=3, shortlist=every)
        exact = beam_search(model, src, lengths, beam_size=3)
    assert output.weight.dtype == torch.bfloat16 and output.bias.dtype == torch.float32
    assert [[h.tokens for h in hyps] for hyps in listed] == [[h.tokens for h in hyps] for hyps in exact]


def test_bf16_search_encodes_under_autocast_and_hands_on_fp32():
    """Search in bf16 on a CPU runs the encoder under bf16 autocast (its fused LSTM layers and attention's keys) and
    widens what it returns; without a dtype the encoder runs in whatever the caller set, a training run's autocast
    included (Products.autocast is no autocast(enabled=False) then)."""
    model = small_translator(attention=True, bidirectional_encoder=True)
    src, lengths = torch.randint(4, 40, (6, 3)), torch.tensor([6, 4, 5])
    seen = []
    model.encoder.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    with torch.no_grad():
        memory, state = model.encode(src, lengths)  # fp32 search
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.encode(src, lengths)  # a bf16 training run's forward: its autocast reaches the encoder
        low = prepare_for_search(model, torch.device("cpu"), torch.bfloat16)
        low_memory, low_state = low.encode(src, lengths)
    assert seen == [False, True, True]
    for exact, rounded in ((memory.outputs, low_memory.outputs), (memory.keys, low_memory.keys),
                           (state.h, low_state.h), (state.c, low_state.c)):
        assert rounded.dtype == torch.float32 and not torch.equal(rounded, exact)
        torch.testing.assert_close(rounded, exact, atol=0.05, rtol=0)
