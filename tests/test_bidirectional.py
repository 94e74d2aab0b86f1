"""Bidirectional StackedLSTM layers (encoders, acoustic models) against a from-the-equations loop."""

import pytest
import torch
from lstm_reference import mask_at, reference_cell

from seq2seq.dropout import sample_masks
from seq2seq.lstm import StackedLSTM, at_lengths, reverse_padded

T, B, D, H, L = 6, 3, 5, 8, 2
ATOL = 1e-5


def direction(x, h, c, w_ih, w_hh, b_ih, b_hh, recurrent_mask=None):
    """One direction over x (T, B, D) from (h, c); h_{t-1} times recurrent_mask where it enters the gates."""
    outputs = []
    for t in range(x.shape[0]):
        h, c = reference_cell(x[t], h * mask_at(recurrent_mask, t), c, w_ih, w_hh, b_ih, b_hh)
        outputs.append(h)
    return torch.stack(outputs), h, c


def reference(lstm, x, h0, c0, masks=None):
    """Both directions of every layer written out: forward reads x, backward reads x reversed."""
    half, hs, cs = H // 2, [], []
    for index, layer in enumerate(lstm.layers):
        if masks is not None:
            x = x * masks.inputs[index]
        w = {name: getattr(layer, name) for name, _ in layer.named_parameters()}
        rec = (None, None) if masks is None or masks.recurrent is None else (
            masks.recurrent[index][..., :half], masks.recurrent[index][..., half:])
        rec_b = None if rec[1] is None else rec[1].flip(0) if rec[1].shape[0] > 1 else rec[1]
        y_f, h_f, c_f = direction(x, h0[index][:, :half], c0[index][:, :half], w["weight_ih_l0"], w["weight_hh_l0"],
                                  w["bias_ih_l0"], w["bias_hh_l0"], rec[0])
        y_b, h_b, c_b = direction(x.flip(0), h0[index][:, half:], c0[index][:, half:], w["weight_ih_l0_reverse"],
                                  w["weight_hh_l0_reverse"], w["bias_ih_l0_reverse"], w["bias_hh_l0_reverse"], rec_b)
        x = torch.cat([y_f, y_b.flip(0)], dim=-1)
        hs.append(torch.cat([h_f, h_b], dim=-1))
        cs.append(torch.cat([c_f, c_b], dim=-1))
    if masks is not None:
        x = x * masks.output
    return x, torch.stack(hs), torch.stack(cs)


def make(mode, p=0.5):
    torch.manual_seed(0)
    lstm = StackedLSTM(D, H, L, dropout=p, dropout_mode=mode, bidirectional=True)
    return lstm, torch.randn(T, B, D), (torch.randn(L, B, H), torch.randn(L, B, H))


@pytest.mark.parametrize("mode", ["zaremba", "variational", "naive"])
def test_bidirectional_matches_reference_under_every_placement(mode):
    lstm, x, state = make(mode)
    masks = lstm.sample_masks(T, B)
    y, (h, c) = lstm(x, state, masks)
    y_ref, h_ref, c_ref = reference(lstm, x, *state, masks)
    assert y.shape == (T, B, H) and h.shape == c.shape == (L, B, H)
    torch.testing.assert_close(y, y_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=ATOL, rtol=0)
    grads = torch.autograd.grad((y * torch.linspace(-1, 1, H)).sum() + h.sum() - c.sum(), list(lstm.parameters()))
    expected = torch.autograd.grad((y_ref * torch.linspace(-1, 1, H)).sum() + h_ref.sum() - c_ref.sum(),
                                   list(lstm.parameters()))
    for grad, grad_ref in zip(grads, expected):  # both directions' weights, through the batched loop's backward
        torch.testing.assert_close(grad, grad_ref, atol=1e-4, rtol=1e-4)


def test_recurrent_mask_halves_go_to_their_own_direction():
    """Masking only the backward half of h_{t-1} must leave the forward direction's outputs untouched."""
    lstm, x, state = make("variational")
    masks = sample_masks("variational", 0.5, T, B, lstm.input_sizes(), H, generator=torch.Generator().manual_seed(3))
    clean = type(masks)(masks.inputs, masks.output, tuple(torch.ones_like(m) for m in masks.recurrent))
    backward_only = type(masks)(masks.inputs, masks.output,
                                tuple(torch.cat([torch.ones_like(m[..., :4]), m[..., 4:]], -1) for m in masks.recurrent))
    y_clean, _ = lstm(x, state, clean)
    y_back, _ = lstm(x, state, backward_only)
    # Layer 1's forward half sees layer 0's backward half, so compare a one-layer LSTM.
    one = StackedLSTM(D, H, 1, dropout=0.5, dropout_mode="variational", bidirectional=True)
    y1, _ = one(x, None, type(masks)(masks.inputs[:1], masks.output, backward_only.recurrent[:1]))
    y1_clean, _ = one(x, None, type(masks)(masks.inputs[:1], masks.output, clean.recurrent[:1]))
    torch.testing.assert_close(y1[..., :4], y1_clean[..., :4], atol=ATOL, rtol=0)
    assert (y1[..., 4:] - y1_clean[..., 4:]).abs().max() > 1e-3
    assert (y_back - y_clean).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["zaremba", "naive"])
def test_padded_sequence_reads_as_if_alone(mode):
    """The backward direction must start at each sequence's own last step, not at the padding."""
    lstm, x, _ = make(mode)
    lstm.eval()
    lengths = torch.tensor([6, 4, 2])
    y, (h, c) = lstm(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        y_alone, (h_alone, c_alone) = lstm(x[:n, b : b + 1])
        torch.testing.assert_close(y[:n, b], y_alone[:, 0], atol=ATOL, rtol=0)
        torch.testing.assert_close(h[:, b], h_alone[:, 0], atol=ATOL, rtol=0)
        torch.testing.assert_close(c[:, b], c_alone[:, 0], atol=ATOL, rtol=0)


def test_step_loop_is_used_in_training_and_matches_fused_weights_in_eval():
    lstm, x, state = make("naive")
    lstm.eval()
    fused, _ = lstm(x, state)
    y_ref, _, _ = reference(lstm, x, *state)
    torch.testing.assert_close(fused, y_ref, atol=ATOL, rtol=0)


def test_reverse_padded_keeps_padding_in_place():
    x = torch.arange(12.0).view(4, 3, 1)
    out = reverse_padded(x, torch.tensor([4, 2, 1]))[..., 0].t().tolist()
    assert out == [[9.0, 6.0, 3.0, 0.0], [4.0, 1.0, 7.0, 10.0], [2.0, 5.0, 8.0, 11.0]]


@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 3), (9, 4, 2, 3)])
def test_reverse_padded_and_its_gradient_equal_a_per_column_flip(shape):
    """Forward and backward against flipping each column's valid prefix by hand (lengths 0 and full included)."""
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([shape[0], 0, 3, 1, shape[0] - 1][: shape[1]])
    expected = torch.stack([torch.cat([x[:n, b].flip(0), x[n:, b]]) for b, n in enumerate(lengths.tolist())], dim=1)
    out = reverse_padded(x, lengths)
    assert torch.equal(out, expected)
    grad = torch.randn(shape, dtype=torch.float64)
    assert torch.equal(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x, grad)[0])


def test_at_lengths_picks_each_sequences_last_step_and_routes_its_gradient_there():
    torch.manual_seed(0)
    steps = torch.randn(6, 2, 4, 3, dtype=torch.float64, requires_grad=True)  # (T, D, B, u)
    initial = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 0, 2, 1])
    out = at_lengths(steps, lengths, initial)
    expected = torch.stack([steps[n - 1, :, b] if n else initial[:, b] for b, n in enumerate(lengths.tolist())], dim=1)
    assert torch.equal(out, expected)
    grad = torch.randn(2, 4, 3, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(out, (steps, initial), grad), torch.autograd.grad(expected, (steps, initial), grad)):
        assert torch.equal(a, b)


def test_odd_hidden_size_is_refused():
    with pytest.raises(ValueError, match="even hidden_size"):
        StackedLSTM(D, 7, 1, bidirectional=True)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("mode", ["zaremba", "variational"])
def test_outputs_only_path_equals_packed_path(bidirectional, mode):
    """outputs() skips packing; its outputs and gradients must equal the packed path's."""
    torch.manual_seed(0)
    lstm = StackedLSTM(D, H, L, dropout=0.3, dropout_mode=mode, bidirectional=bidirectional)
    x = torch.randn(T, B, D, requires_grad=True)
    lengths = torch.tensor([6, 3, 5])
    masks = lstm.sample_masks(T, B)
    packed, _ = lstm(x, masks=masks, lengths=lengths)
    (grad_packed,) = torch.autograd.grad(packed.pow(2).sum(), x)
    unpacked = lstm.outputs(x, lengths, masks)
    (grad_unpacked,) = torch.autograd.grad(unpacked.pow(2).sum(), x)
    torch.testing.assert_close(unpacked, packed, atol=ATOL, rtol=0)
    torch.testing.assert_close(grad_unpacked, grad_packed, atol=ATOL, rtol=0)
    assert (unpacked[3:, 1] == 0).all()
