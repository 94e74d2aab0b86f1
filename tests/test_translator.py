import pytest
import torch
import torch.nn.functional as F

from seq2seq.tokenizer import BOS, EOS, PAD
from seq2seq.lstm import reverse_padded
from seq2seq.translator import Translator, TranslatorConfig

VARIANTS = {
    "paper": dict(attention=False),
    "attention": dict(attention=True),
    "input_feeding": dict(attention=True, input_feeding=True),
    "bidirectional": dict(attention=True, input_feeding=True, bidirectional_encoder=True),
}


def tiny(variant="paper", **overrides):
    torch.manual_seed(0)
    settings = dict(src_vocab_size=11, tgt_vocab_size=9, embedding_size=6, hidden_size=6, num_layers=2,
                    dropout=0.0, init_scale=0.5, **VARIANTS[variant])
    config = TranslatorConfig(**{**settings, **overrides})
    return Translator(config).eval()


def batch():
    src = torch.tensor([[4, 5, 6, 7], [8, 9, 10, PAD], [5, PAD, PAD, PAD]]).t()  # (S=4, B=3)
    lengths = torch.tensor([4, 3, 1])
    tgt = torch.tensor([[BOS, 4, 5, 6, EOS], [BOS, 7, EOS, PAD, PAD], [BOS, 8, 8, EOS, PAD]]).t()  # (5, 3)
    return src, lengths, tgt[:-1], tgt[1:]


def test_reverse_padded_keeps_padding_at_the_end():
    src, lengths, _, _ = batch()
    assert reverse_padded(src, lengths).t().tolist() == [[7, 6, 5, 4], [10, 9, 8, PAD], [5, PAD, PAD, PAD]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_sentence_encodes_as_if_alone(variant):
    model = tiny(variant)
    src, lengths, _, _ = batch()
    memory, state = model.encode(src, lengths)
    _, alone = model.encode(src[:3, 1:2], lengths[1:2])
    torch.testing.assert_close(state.h[:, 1:2], alone.h, atol=1e-6, rtol=0)
    assert memory.src_mask.tolist()[1] == [True, True, True, False]


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_is_cross_entropy_over_non_pad_targets(variant):
    model = tiny(variant)
    src, lengths, tgt_in, tgt_out = batch()
    loss, count = model(src, lengths, tgt_in, tgt_out, label_smoothing=0.1)
    memory, state = model.encode(src, lengths)
    top, _ = model.decode(tgt_in, state, memory)
    logits = model.output(top)
    expected = F.cross_entropy(logits.reshape(-1, 9), tgt_out.reshape(-1), ignore_index=PAD,
                               label_smoothing=0.1, reduction="sum")
    torch.testing.assert_close(loss, expected)
    assert count.item() == 4 + 2 + 3


@pytest.mark.parametrize("variant", VARIANTS)
def test_step_by_step_decoding_equals_teacher_forcing(variant):
    model = tiny(variant)
    src, lengths, tgt_in, _ = batch()
    memory, state = model.encode(src, lengths)
    top, _ = model.decode(tgt_in, state, memory)
    forced = torch.log_softmax(model.output(top), dim=-1)  # (T, B, V)
    for t in range(tgt_in.shape[0]):
        log_probs, state = model.step(tgt_in[t], state, memory)
        torch.testing.assert_close(log_probs, forced[t], atol=1e-5, rtol=0)


def test_dropout_only_in_training_and_source_reversal_matters():
    model = tiny("attention", dropout=0.3)
    src, lengths, tgt_in, tgt_out = batch()
    model.train()
    a, _ = model(src, lengths, tgt_in, tgt_out)
    b, _ = model(src, lengths, tgt_in, tgt_out)
    model.eval()
    c, _ = model(src, lengths, tgt_in, tgt_out)
    d, _ = model(src, lengths, tgt_in, tgt_out)
    assert a != b and c == d
    forward = Translator(TranslatorConfig(**{**model.config.__dict__, "reverse_source": False}))
    forward.load_state_dict(model.state_dict())
    e, _ = forward.eval()(src, lengths, tgt_in, tgt_out)
    assert e != c


def test_tied_embeddings_share_one_matrix():
    model = tiny("attention", tie_embeddings=True)
    assert model.output.weight is model.tgt_embedding.weight
    with pytest.raises(ValueError):
        TranslatorConfig(src_vocab_size=5, tgt_vocab_size=5, embedding_size=4, hidden_size=6, tie_embeddings=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_search_step_equals_teacher_forcing_and_follows_weight_updates(variant):
    """step() reads layer 0's input gates from a per-token table; an optimiser update or a
    load_state_dict must reach it."""
    model = tiny(variant)
    src, lengths, tgt_in, tgt_out = batch()

    def stepped_log_probs():
        memory, state = model.encode(src, lengths)
        rows = []
        for t in range(tgt_in.shape[0]):
            log_probs, state = model.step(tgt_in[t], state, memory)
            rows.append(log_probs)
        return torch.stack(rows)  # (T, B, V)

    def forced_log_probs():
        memory, state = model.encode(src, lengths)
        return torch.log_softmax(model.output(model.decode(tgt_in, state, memory)[0]), dim=-1)

    with torch.no_grad():
        torch.testing.assert_close(stepped_log_probs(), forced_log_probs(), atol=1e-5, rtol=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss, _ = model(src, lengths, tgt_in, tgt_out)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        torch.testing.assert_close(stepped_log_probs(), forced_log_probs(), atol=1e-5, rtol=0)
        model.load_state_dict(tiny(variant, init_scale=0.9).state_dict())
        torch.testing.assert_close(stepped_log_probs(), forced_log_probs(), atol=1e-5, rtol=0)


def test_attention_batch_first_equals_time_first_transposed():
    """Search calls attention with its rows batch-first ((B, R, H), no transposes or copies around it); the
    values are those of the time-first call, transposed."""
    model = tiny("attention", hidden_size=16)
    src, lengths, _, _ = batch()
    memory, _ = model.encode(src, lengths)
    query = torch.randn(5, 3, 16, generator=torch.Generator().manual_seed(2))  # (T, B, H)
    time_first, weights = model.attention(query, memory.keys, memory.outputs, memory.src_mask, return_weights=True)
    batch_first, weights_bf = model.attention(query.transpose(0, 1).contiguous(), memory.keys, memory.outputs,
                                              memory.src_mask, return_weights=True, batch_first=True)
    assert batch_first.shape == (3, 5, 16)
    torch.testing.assert_close(batch_first, time_first.transpose(0, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(weights_bf, weights, rtol=0, atol=0)
