"""The translator's dropout placement against an independent decoder written from the table in
seq2seq/translator.py: each misplacement (a mask on the attention query, on the input-feeding path in
zaremba mode, on h_{t-1} in zaremba mode, or no mask before the output projection) changes the values."""

import copy

import pytest
import torch

from lstm_reference import mask_at, reference_cell, reference_stacked_lstm, weights_of
from seq2seq.lstm import reverse_padded
from seq2seq.tokenizer import BOS, EOS, PAD
from seq2seq.translator import Translator, TranslatorConfig

VARIANTS = {
    "paper": dict(attention=False),
    "attention": dict(attention=True),
    "input_feeding": dict(attention=True, input_feeding=True),
    "bidirectional_feeding": dict(attention=True, input_feeding=True, bidirectional_encoder=True),
    "tied": dict(attention=True, tie_embeddings=True),
}
MODES = ("zaremba", "variational", "naive")
E, H = 6, 6


def model_for(variant, mode, p=0.5):
    torch.manual_seed(0)
    config = TranslatorConfig(src_vocab_size=11, tgt_vocab_size=9, embedding_size=E, hidden_size=H, num_layers=2,
                              dropout=p, dropout_mode=mode, init_scale=0.5, **VARIANTS[variant])
    return Translator(config).train()


def batch():
    src = torch.tensor([[4, 5, 6, 7], [8, 9, 10, PAD], [5, PAD, PAD, PAD]]).t()  # (S=4, B=3)
    lengths = torch.tensor([4, 3, 1])
    tgt = torch.tensor([[BOS, 4, 5, 6, EOS], [BOS, 7, EOS, PAD, PAD], [BOS, 8, 8, EOS, PAD]]).t()  # (5, 3)
    return src, lengths, tgt[:-1], tgt[1:]


def reference_attention(attention, query, memory):
    """Luong 'general' attention from its equations. query: (B, H) -> h~ (B, H)."""
    scores = torch.einsum("bh,hk,sbk->bs", query, attention.score.weight, memory.outputs)  # (B, S)
    weights = torch.softmax(scores.masked_fill(~memory.src_mask, float("-inf")), dim=-1)
    context = torch.einsum("bs,sbh->bh", weights, memory.outputs)
    return torch.tanh(torch.cat([context, query], dim=-1) @ attention.combine.weight.T)


def reference_decode(model, tgt_in, state, memory, masks):
    """The decoder from the table: masks on the embedding, between layers, h_{t-1} only where the mode has
    recurrent masks, h~_{t-1} only outside zaremba mode, and on the vector the output projection reads."""
    config = model.config
    h, c, feed, outputs = list(state.h), list(state.c), state.feed, []
    for t in range(tgt_in.shape[0]):
        first = mask_at(masks.inputs[0], t)
        x = model.tgt_embedding(tgt_in[t]) * first[:, :E]
        if config.input_feeding:
            x = torch.cat([x, feed * (1.0 if config.dropout_mode == "zaremba" else first[:, E:])], dim=-1)
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights_of(model.decoder)):
            if layer > 0:
                x = x * mask_at(masks.inputs[layer], t)
            h_in = h[layer] * (mask_at(masks.recurrent[layer], t) if config.dropout_mode != "zaremba" else 1.0)
            h[layer], c[layer] = reference_cell(x, h_in, c[layer], w_ih, w_hh, b_ih, b_hh)
            x = h[layer]
        if config.attention:
            x = reference_attention(model.attention, x, memory)  # the query: the undropped top output
            feed = x
        outputs.append(x * mask_at(masks.output, t))
    return torch.stack(outputs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_decoder_masks_sit_where_the_table_says(variant, mode):
    model = model_for(variant, mode)
    src, lengths, tgt_in, _ = batch()
    with torch.no_grad():
        memory, state = copy.deepcopy(model).eval().encode(src, lengths)
        masks = model.dropout_masks(*tgt_in.shape, generator=torch.Generator().manual_seed(3))
        top, _ = model.decode(tgt_in, state, memory, masks)
        expected = reference_decode(model, tgt_in, state, memory, masks)
    torch.testing.assert_close(top, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_sampled_masks_follow_the_table(mode):
    model = model_for("input_feeding", mode)
    T, B = 7, 5
    masks = model.dropout_masks(T, B, generator=torch.Generator().manual_seed(0))
    feed_part, embedding_part = masks.inputs[0][..., E:], masks.inputs[0][..., :E]
    steps = 1 if mode == "variational" else T
    assert all(m.shape[0] == steps for m in masks.inputs + (masks.output,))
    assert not bool((embedding_part == 1).all()) and not bool((masks.output == 1).all())
    if mode == "zaremba":
        assert masks.recurrent is None
        assert bool((feed_part == 1).all())  # h~_{t-1} crosses time: never dropped in zaremba mode
    else:
        assert len(masks.recurrent) == 2 and all(m.shape[0] == steps for m in masks.recurrent)
        assert not bool((feed_part == 1).all())


@pytest.mark.parametrize("mode", MODES)
def test_encoder_masks_only_its_inputs_and_never_its_outputs(mode):
    model = model_for("attention", mode)
    src, lengths, _, _ = batch()
    masks = model.encoder.sample_masks(*src.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        memory, state = model.encode(src, lengths, masks)
        embedded = model.src_embedding(reverse_padded(src, lengths))
        zeros = torch.zeros(2, src.shape[1], H)
        expected, h_n, _ = reference_stacked_lstm(embedded, weights_of(model.encoder), zeros, zeros,
                                                input_masks=masks.inputs, recurrent_masks=masks.recurrent)
    valid = memory.src_mask.t().unsqueeze(-1)  # (S, B, 1): the reference runs past each sentence's end
    torch.testing.assert_close(memory.outputs * valid, expected * valid, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(state.h[:, 0], h_n[:, 0], atol=1e-6, rtol=1e-5)  # sentence 0 fills all 4 steps


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_step_by_step_with_the_same_masks_equals_teacher_forcing(variant, mode):
    model = model_for(variant, mode)
    src, lengths, tgt_in, _ = batch()
    with torch.no_grad():
        memory, state = model.encode(src, lengths)
        masks = model.dropout_masks(*tgt_in.shape)
        whole, _ = model.decode(tgt_in, state, memory, masks)
        steps, running = [], state
        for t in range(tgt_in.shape[0]):
            out, running = model.decode(tgt_in[t : t + 1], running, memory, masks.at(t))
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps), whole, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_mode_is_the_model_without_dropout(variant, mode):
    model = model_for(variant, mode).eval()
    plain = model_for(variant, "zaremba", p=0.0).eval()
    plain.load_state_dict(model.state_dict())
    src, lengths, tgt_in, tgt_out = batch()
    with torch.no_grad():
        assert model.dropout_masks(*tgt_in.shape) is None
        loss, _ = model(src, lengths, tgt_in, tgt_out)
        torch.testing.assert_close(loss, plain(src, lengths, tgt_in, tgt_out)[0], atol=0, rtol=0)
        model.train()
        assert not torch.equal(model(src, lengths, tgt_in, tgt_out)[0], loss)
