"""Dropout placement in the stacked LSTM, checked against an independent from-the-equations loop."""

import pytest
import torch
from torch import nn
from hypothesis import given, settings
from hypothesis import strategies as st
from lstm_reference import reference_stacked_lstm, weights_of

from seq2seq.dropout import DROPOUT_MODES, bernoulli_mask, sample_masks
from seq2seq.translator import decoder_step
from seq2seq.lstm import StackedLSTM, lstm_pointwise

T, B, D, H, L = 7, 3, 5, 6, 3
ATOL = 1e-5


def make(mode, p=0.5, seed=0):
    torch.manual_seed(seed)
    lstm = StackedLSTM(D, H, L, dropout=p, dropout_mode=mode)
    x = torch.randn(T, B, D)
    state = (torch.randn(L, B, H), torch.randn(L, B, H))
    return lstm, x, state


def run_reference(lstm, x, state, masks, recurrent=True):
    return reference_stacked_lstm(
        x, weights_of(lstm), *state, input_masks=masks.inputs,
        recurrent_masks=masks.recurrent if recurrent else None, output_mask=masks.output)


@pytest.mark.parametrize("mode", DROPOUT_MODES)
def test_no_dropout_matches_reference(mode):
    lstm, x, state = make(mode, p=0.0)
    y, (h, c) = lstm(x, state)
    y_ref, h_ref, c_ref = reference_stacked_lstm(x, weights_of(lstm), *state)
    torch.testing.assert_close(y, y_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("shape", [(1,), (15,), (16,), (17,), (1, 3, 7), (20, 20, 200), (3, 1000, 37)])
@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.65])
@pytest.mark.parametrize("explicit_generator", [False, True])
def test_cpu_masks_equal_bernoulli_bit_for_bit_and_leave_the_generator_where_it_would(shape, p, explicit_generator):
    """Masks drawn from torch.rand's doubles must be exactly bernoulli_'s, generator state included, or every
    recorded run with dropout would stop repeating."""
    def generator():
        torch.manual_seed(7)
        return torch.Generator().manual_seed(11) if explicit_generator else None

    gen = generator()
    expected = torch.empty(shape).bernoulli_(1.0 - p, generator=gen).div_(1.0 - p)
    expected_next = torch.rand(4, generator=gen)
    gen = generator()
    mask = bernoulli_mask(shape, p, generator=gen)
    assert mask.dtype == torch.float32 and mask.shape == shape
    assert torch.equal(mask, expected)
    assert torch.equal(torch.rand(4, generator=gen), expected_next)
    if mask.numel() >= 1000:
        assert abs(float((mask > 0).float().mean()) - (1.0 - p)) < 0.05
        assert set(mask.unique().tolist()) == {0.0, float(torch.tensor(1.0) / (1.0 - p))}


def test_zaremba_masks_are_fresh_per_step_and_leave_recurrence_alone():
    masks = sample_masks("zaremba", 0.5, T, B, [D, H, H], H, generator=torch.Generator().manual_seed(1))
    assert masks.recurrent is None
    assert [m.shape for m in masks.inputs] == [(T, B, D), (T, B, H), (T, B, H)]
    assert masks.output.shape == (T, B, H)
    assert set(torch.unique(masks.inputs[0]).tolist()) == {0.0, 2.0}  # kept units scaled by 1 / (1 - p)
    assert not torch.equal(masks.inputs[1][0], masks.inputs[1][1])


def test_zaremba_fused_path_equals_reference_with_clean_recurrence():
    lstm, x, state = make("zaremba")
    masks = lstm.sample_masks(T, B)
    y, (h, c) = lstm(x, state, masks)
    y_ref, h_ref, c_ref = run_reference(lstm, x, state, masks, recurrent=False)
    torch.testing.assert_close(y, y_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=ATOL, rtol=0)
    # The same vertical masks plus a mask on h_{t-1} give a different result, so the check above
    # would catch a mask leaking into the recurrent path.
    leak = sample_masks("naive", 0.5, T, B, [D, H, H], H).recurrent
    y_leak, _, _ = reference_stacked_lstm(x, weights_of(lstm), *state, input_masks=masks.inputs,
                                          recurrent_masks=leak, output_mask=masks.output)
    assert (y - y_leak).abs().max() > 1e-2


def test_zaremba_recurrent_gradient_is_not_masked():
    """d h_T / d h_0 flows through h_{t-1} -> h_t only: in zaremba mode it must equal the unmasked
    recurrence's, whatever vertical masks were drawn."""
    lstm, x, (h0, c0) = make("zaremba")
    masks = lstm.sample_masks(T, B)
    h0 = h0.clone().requires_grad_(True)
    y, _ = lstm(x, (h0, c0), masks)
    (grad,) = torch.autograd.grad(y.sum(), h0)
    h0_ref = h0.detach().clone().requires_grad_(True)
    y_ref, _, _ = run_reference(lstm, x, (h0_ref, c0), masks, recurrent=False)
    (grad_ref,) = torch.autograd.grad(y_ref.sum(), h0_ref)
    torch.testing.assert_close(grad, grad_ref, atol=ATOL, rtol=0)


def test_training_forward_draws_the_masks_sample_masks_would():
    lstm, x, state = make("zaremba")
    torch.manual_seed(123)
    y_drawn, _ = lstm(x, state)
    torch.manual_seed(123)
    y_given, _ = lstm(x, state, lstm.sample_masks(T, B))
    torch.testing.assert_close(y_drawn, y_given, atol=0, rtol=0)


def test_variational_masks_are_shared_over_time_and_applied_to_h_prev():
    lstm, x, state = make("variational")
    masks = lstm.sample_masks(T, B)
    assert all(m.shape[0] == 1 for m in masks.inputs + masks.recurrent + (masks.output,))
    assert [m.shape for m in masks.recurrent] == [(1, B, H)] * L
    y, (h, c) = lstm(x, state, masks)
    y_ref, h_ref, c_ref = run_reference(lstm, x, state, masks)
    torch.testing.assert_close(y, y_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=ATOL, rtol=0)
    y_clean, _, _ = run_reference(lstm, x, state, masks, recurrent=False)
    assert (y - y_clean).abs().max() > 1e-2  # the recurrent mask really is applied


def test_naive_masks_are_fresh_per_step_on_both_paths():
    lstm, x, state = make("naive")
    masks = lstm.sample_masks(T, B)
    for mask in masks.inputs + masks.recurrent:
        assert mask.shape[0] == T
        assert not torch.equal(mask[0], mask[1])
    y, _ = lstm(x, state, masks)
    y_ref, _, _ = run_reference(lstm, x, state, masks)
    torch.testing.assert_close(y, y_ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["variational", "naive"])
def test_step_loop_gradients_match_reference(mode):
    lstm, x, state = make(mode)
    masks = lstm.sample_masks(T, B)
    y, _ = lstm(x, state, masks)
    grads = torch.autograd.grad(y.square().sum(), list(lstm.parameters()))
    y_ref, _, _ = run_reference(lstm, x, state, masks)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(lstm.parameters()))
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", DROPOUT_MODES)
def test_eval_mode_is_exactly_no_dropout(mode):
    lstm, x, state = make(mode, p=0.5)
    clean = StackedLSTM(D, H, L, dropout=0.0, dropout_mode="none")
    clean.load_state_dict(lstm.state_dict())
    lstm.eval()
    y, (h, c) = lstm(x, state)
    y_clean, (h_clean, c_clean) = clean(x, state)
    assert torch.equal(y, y_clean) and torch.equal(h, h_clean) and torch.equal(c, c_clean)


@pytest.mark.parametrize("mode", DROPOUT_MODES)
def test_training_mode_drops(mode):
    lstm, x, state = make(mode, p=0.5)
    y_train, _ = lstm(x, state)
    y_eval, _ = lstm.eval()(x, state)
    assert torch.equal(y_train, y_eval) == (mode == "none")


@pytest.mark.parametrize("mode", ["zaremba", "variational"])
def test_state_carried_across_windows_equals_one_long_window(mode):
    lstm, x, state = make(mode, p=0.0)
    y_full, (h_full, c_full) = lstm(x, state)
    y_a, mid = lstm(x[:3], state)
    y_b, (h_b, c_b) = lstm(x[3:], mid)
    torch.testing.assert_close(torch.cat([y_a, y_b]), y_full, atol=ATOL, rtol=0)
    torch.testing.assert_close(c_b, c_full, atol=ATOL, rtol=0)


@settings(max_examples=15, deadline=None)
@given(steps=st.integers(1, 6), batch=st.integers(1, 4), inp=st.integers(1, 5), hidden=st.integers(1, 5),
       layers=st.integers(1, 3), mode=st.sampled_from(DROPOUT_MODES), seed=st.integers(0, 2**16))
def test_any_shape_matches_reference(steps, batch, inp, hidden, layers, mode, seed):
    torch.manual_seed(seed)
    lstm = StackedLSTM(inp, hidden, layers, dropout=0.3, dropout_mode=mode)
    x = torch.randn(steps, batch, inp)
    state = (torch.randn(layers, batch, hidden), torch.randn(layers, batch, hidden))
    masks = lstm.sample_masks(steps, batch)
    y, (h, c) = lstm(x, state, masks)
    y_ref, h_ref, c_ref = reference_stacked_lstm(
        x, weights_of(lstm), *state, input_masks=masks.inputs if masks else None,
        recurrent_masks=masks.recurrent if masks else None, output_mask=masks.output if masks else None)
    assert y.shape == (steps, batch, hidden) and h.shape == (layers, batch, hidden)
    torch.testing.assert_close(y, y_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=ATOL, rtol=0)


def test_bad_mode_and_probability_are_rejected():
    with pytest.raises(ValueError, match="dropout_mode"):
        StackedLSTM(D, H, L, dropout=0.1, dropout_mode="recurrent")
    with pytest.raises(ValueError, match="dropout must be"):
        StackedLSTM(D, H, L, dropout=1.0)


@pytest.mark.parametrize("mode", DROPOUT_MODES)
def test_padded_batch_gives_each_sequence_its_own_final_state(mode):
    lstm, x, state = make(mode, p=0.5)
    lengths = torch.tensor([T, 2, 5])
    masks = lstm.sample_masks(T, B)
    y, (h, c) = lstm(x, state, masks, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        one = lambda m: m[:n, b : b + 1] if m.shape[0] > 1 else m[:, b : b + 1]  # noqa: E731
        sub = None if masks is None else type(masks)(
            tuple(map(one, masks.inputs)), one(masks.output),
            None if masks.recurrent is None else tuple(map(one, masks.recurrent)))
        y_b, (h_b, c_b) = lstm(x[:n, b : b + 1], (state[0][:, b : b + 1], state[1][:, b : b + 1]), sub)
        torch.testing.assert_close(y[:n, b : b + 1], y_b, atol=ATOL, rtol=0)
        torch.testing.assert_close(h[:, b : b + 1], h_b, atol=ATOL, rtol=0)
        assert not y[n:, b].any()  # padded steps give zeros


@pytest.mark.parametrize("bidirectional", [False, True])
def test_inference_on_a_padded_batch_runs_by_length_and_equals_packing(bidirectional):
    """Without autograd on a CPU a padded batch runs each length's group on the unpacked kernel: the same outputs
    and final states as the packed path training takes (fp32, within rounding), zeros after each length, and a
    length-0 sequence keeps its initial state; under bf16 autocast it runs in bf16, as an unpadded batch does."""
    torch.manual_seed(0)
    lstm = StackedLSTM(D, H, 2, bidirectional=bidirectional).eval()
    x, lengths = torch.randn(T, 5, D), torch.tensor([T, 2, 5, 0, 2])
    state = (torch.randn(2, 5, H), torch.randn(2, 5, H))
    kept = torch.tensor([0, 1, 2, 4])  # packing refuses a length of 0
    y_packed, (h_packed, c_packed) = lstm(x[:, kept], (state[0][:, kept], state[1][:, kept]),
                                          lengths=lengths[kept])  # autograd on: packed
    with torch.no_grad():
        y, (h, c) = lstm(x, state, lengths=lengths)
    torch.testing.assert_close(y[:, kept], y_packed, atol=1e-6, rtol=0)
    torch.testing.assert_close(h[:, kept], h_packed, atol=1e-6, rtol=0)
    torch.testing.assert_close(c[:, kept], c_packed, atol=1e-6, rtol=0)
    assert torch.equal(h[:, 3], state[0][:, 3]) and torch.equal(c[:, 3], state[1][:, 3])
    assert not y[2:, 1].any() and not y[:, 3].any()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y16, (h16, _) = lstm(x, state, lengths=lengths)
        y_alone, (h_alone, _) = lstm(x[:5, 2:3], (state[0][:, 2:3], state[1][:, 2:3]))  # column 2 (length 5) alone
    assert y16.dtype == h16.dtype == torch.bfloat16
    assert torch.equal(y16[:5, 2:3], y_alone) and torch.equal(h16[:, 2:3], h_alone)
    torch.testing.assert_close(y16[:, kept].float(), y_packed, atol=3e-2, rtol=0)


def test_masks_at_step_match_the_full_sequence():
    lstm, x, state = make("zaremba")
    masks = lstm.sample_masks(T, B)
    y_full, _ = lstm(x, state, masks)
    outputs, s = [], state
    for t in range(T):
        y_t, s = lstm(x[t : t + 1], s, masks.at(t))
        outputs.append(y_t)
    torch.testing.assert_close(torch.cat(outputs), y_full, atol=ATOL, rtol=0)


def test_single_step_equals_reference_step_by_step():
    lstm, x, state = make("zaremba", p=0.5)
    lstm.eval()
    y_ref, h_ref, c_ref = reference_stacked_lstm(x, weights_of(lstm), *state)
    weight_ih, bias = lstm.layers[0].weight_ih_l0, lstm.layers[0].bias_ih_l0 + lstm.layers[0].bias_hh_l0
    for first_gates in (False, True):
        current = state
        for t in range(T):
            gates = nn.functional.linear(x[t], weight_ih, bias) if first_gates else None
            y, current = decoder_step(lstm, None if first_gates else x[t], current, first_gates=gates)
            torch.testing.assert_close(y, y_ref[t], atol=ATOL, rtol=0)
        torch.testing.assert_close(current[0], h_ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(current[1], c_ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("rows, units", [(320, 256), (7, 200), (5, 37)])
def test_in_place_cell_equals_the_out_of_place_equations_bit_for_bit(rows, units):
    """Search's cell works in place on its gates; the values are those of the equations written out of place,
    to the last bit (so decoding repeats earlier runs exactly), and the cell state passed in is left alone."""
    torch.manual_seed(rows)
    gates, c = torch.randn(rows, 4 * units) * 3, torch.randn(rows, units)
    i, f, g, o = gates.chunk(4, -1)
    c_expected = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_expected = torch.sigmoid(o) * torch.tanh(c_expected)
    c_before = c.clone()
    h_new, c_new = lstm_pointwise(gates, c)
    assert torch.equal(h_new, h_expected) and torch.equal(c_new, c_expected)
    assert torch.equal(c, c_before) and h_new.is_contiguous()


def test_under_cpu_bf16_autocast_a_step_loop_layer_runs_its_recurrence_in_fp32():
    """Only the input product over all steps takes autocast's bf16; the recurrence (per-step products of a few
    rows and the cell) runs in the state's fp32, which is faster on a CPU: the layer equals the recurrence fed
    that bf16 product widened to fp32, bit for bit."""
    from seq2seq.lstm import recurrent_layer
    from seq2seq.recurrence import MaskedLSTMRecurrence
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 6)
    x, h, c = torch.randn(5, 3, 8), torch.randn(3, 6), torch.randn(3, 6)
    mask = bernoulli_mask((5, 3, 6), 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h_last, c_last = recurrent_layer(x, h, c, lstm, mask)
        x_proj = nn.functional.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)  # (T, B, 4u)
    assert x_proj.dtype == torch.bfloat16 and y.dtype == torch.float32
    hs, cs = MaskedLSTMRecurrence.apply(x_proj.float()[:, None], lstm.weight_hh_l0[None], h[None], c[None],
                                        mask[:, None])
    assert torch.equal(y, hs[:, 0]) and torch.equal(h_last, hs[-1, 0]) and torch.equal(c_last, cs[-1, 0])
