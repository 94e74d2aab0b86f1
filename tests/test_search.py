import itertools
import math

import pytest
import torch

from seq2seq import search
from seq2seq.search import beam_search, greedy_search, length_penalty
from seq2seq.tokenizer import BOS, EOS, PAD, UNK
from seq2seq.translator import Translator, TranslatorConfig

VARIANTS = [dict(attention=False), dict(attention=True), dict(attention=True, input_feeding=True),
            dict(attention=True, bidirectional_encoder=True)]


def model_with(variant, tgt_vocab=9, seed=0):
    torch.manual_seed(seed)
    config = TranslatorConfig(src_vocab_size=12, tgt_vocab_size=tgt_vocab, embedding_size=8, hidden_size=8,
                              num_layers=2, dropout=0.0, init_scale=0.6, **variant)
    return Translator(config).eval()


def sources(seed=1, batch=5):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (batch,), generator=g)
    src = torch.full((int(lengths.max()), batch), PAD)
    for b, n in enumerate(lengths.tolist()):
        src[:n, b] = torch.randint(4, 12, (n,), generator=g)
    return src, lengths


def teacher_forced_log_prob(model, src, lengths, tokens):
    """log P(tokens, </s> | src) from one teacher-forced pass, independent of the search code."""
    tgt = torch.tensor([BOS, *tokens, EOS]).unsqueeze(1)
    memory, state = model.encode(src, lengths)
    top, _ = model.decode(tgt[:-1], state, memory)
    log_probs = torch.log_softmax(model.output(top)[:, 0], dim=-1)
    return log_probs.gather(1, tgt[1:]).sum().item()


@pytest.mark.parametrize("variant", VARIANTS)
def test_beam_one_equals_greedy(variant):
    model = model_with(variant)
    src, lengths = sources()
    greedy = greedy_search(model, src, lengths, max_len_a=1.0, max_len_b=3)
    beam = beam_search(model, src, lengths, beam_size=1, max_len_a=1.0, max_len_b=3)
    assert [g.tokens for g in greedy] == [b[0].tokens for b in beam]
    for g, b in zip(greedy, beam):
        assert g.log_prob == pytest.approx(b[0].log_prob, abs=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_does_not_depend_on_batch(variant):
    model = model_with(variant)
    src, lengths = sources(batch=6)
    together = beam_search(model, src, lengths, beam_size=4, alpha=0.6, nbest=2)
    for b in range(6):
        alone = beam_search(model, src[: lengths[b], b : b + 1], lengths[b : b + 1], beam_size=4, alpha=0.6, nbest=2)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[b]]
        for x, y in zip(alone, together[b]):
            assert x.score == pytest.approx(y.score, abs=1e-4)
    pairs = beam_search(model, src[:, :2], lengths[:2], beam_size=4, alpha=0.6, nbest=2)
    assert [[h.tokens for h in n] for n in pairs] == [[h.tokens for h in n] for n in together[:2]]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_finds_the_brute_force_optimum(variant, alpha):
    model = model_with(variant, tgt_vocab=6)  # outputs: <unk>, 4, 5 and </s>
    src, lengths = sources(seed=3, batch=3)
    limit = 3
    found = beam_search(model, src, lengths, beam_size=64, alpha=alpha, max_len_a=0.0, max_len_b=limit)
    for b in range(3):
        one_src, one_len = src[: lengths[b], b : b + 1], lengths[b : b + 1]
        best = max(
            (teacher_forced_log_prob(model, one_src, one_len, seq) / length_penalty(len(seq) + 1, alpha), seq)
            for n in range(limit + 1) for seq in itertools.product([UNK, 4, 5], repeat=n))
        assert found[b][0].tokens == best[1]
        assert found[b][0].score == pytest.approx(best[0], abs=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_reported_scores_are_teacher_forced_log_probs_with_penalty(variant):
    model = model_with(variant)
    src, lengths = sources(seed=5, batch=3)
    nbest = beam_search(model, src, lengths, beam_size=5, alpha=0.8, nbest=3, min_len=2)
    for b, hyps in enumerate(nbest):
        assert len(hyps) == 3 and hyps[0].score >= hyps[1].score >= hyps[2].score
        for h in hyps:
            assert len(h.tokens) >= 2 and EOS not in h.tokens and BOS not in h.tokens
            forced = teacher_forced_log_prob(model, src[: lengths[b], b : b + 1], lengths[b : b + 1], h.tokens)
            assert h.log_prob == pytest.approx(forced, abs=1e-4)
            assert h.score == pytest.approx(forced / length_penalty(len(h.tokens) + 1, 0.8), abs=1e-4)


def test_max_length_is_a_times_source_plus_b():
    model = model_with(VARIANTS[0])
    src, lengths = sources(seed=7, batch=4)
    for hyps in [beam_search(model, src, lengths, beam_size=3, max_len_a=0.5, max_len_b=1, nbest=3)]:
        for b, n in enumerate(hyps):
            assert all(len(h.tokens) <= math.floor(0.5 * lengths[b].item() + 1) for h in n)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
@pytest.mark.parametrize("nbest", [1, 3])
def test_early_stop_keeps_the_nbest_of_searching_on(monkeypatch, alpha, nbest):
    """A sentence stops once no live hypothesis can enter its n-best; without that stop the search runs until
    beam_size hypotheses have ended, and must return the same n-best."""
    model = model_with(dict(attention=True, bidirectional_encoder=True), tgt_vocab=12, seed=3)
    src, lengths = sources(seed=8, batch=6)
    early = beam_search(model, src, lengths, beam_size=4, alpha=alpha, nbest=nbest, max_len_b=8)
    monkeypatch.setattr(search, "cannot_improve", lambda *args: False)
    late = beam_search(model, src, lengths, beam_size=4, alpha=alpha, nbest=nbest, max_len_b=8)
    for a, b in zip(early, late):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


@pytest.mark.parametrize("variant", [dict(attention=True), dict(attention=True, input_feeding=True, reverse_source=False)])
def test_alignment_is_the_attention_argmax_along_each_hypothesis(variant):
    """The positions search reports equal those of stepping the model along the hypothesis alone."""
    model = model_with(variant, seed=5)
    src, lengths = sources(seed=9, batch=5)
    found = beam_search(model, src, lengths, beam_size=3, alpha=0.6, nbest=2, alignment=True)
    plain = beam_search(model, src, lengths, beam_size=3, alpha=0.6, nbest=2)
    for b, hyps in enumerate(found):
        assert [h.tokens for h in hyps] == [h.tokens for h in plain[b]]  # asking for alignments changes nothing else
        one_src, one_len = src[: lengths[b], b : b + 1], lengths[b : b + 1]
        for h in hyps:
            memory, state = model.encode(one_src, one_len)
            positions, token = [], torch.tensor([BOS])
            for next_token in h.tokens:
                _, state, position = model.step(token, state, memory, alignment=True)
                positions.append(int(position))
                token = torch.tensor([next_token])
            assert len(h.alignment) == len(h.tokens) and list(h.alignment) == positions
            assert all(0 <= p < int(one_len) for p in positions)
