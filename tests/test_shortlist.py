"""Lexical shortlists: IBM Model 1 against a loop written from the equations, candidate sets, and beam
search over a shortlist against teacher forcing renormalised over the same set."""

import dataclasses
import random

import numpy as np
import pytest
import torch
from test_search import model_with, sources

from seq2seq.data.encoded import EncodedPairs
from seq2seq.errors import UserError
from seq2seq.search import beam_search, length_penalty
from seq2seq.shortlist import Shortlist, build_shortlist, ibm_model1, load_shortlist
from seq2seq.tokenizer import BOS, EOS, PAD


def reference_ibm1(src_rows, tgt_rows, src_vocab, tgt_vocab, iterations):
    """Brown et al. (1993) Model 1, sentence by sentence with dicts; NULL is source id src_vocab."""
    t = {(e, f): 1.0 / tgt_vocab for e in range(src_vocab + 1) for f in range(tgt_vocab)}
    for _ in range(iterations):
        count, total = {}, {}
        for es, fs in zip(src_rows, tgt_rows):
            es = [src_vocab, *es]
            for f in fs:
                z = sum(t[e, f] for e in es)
                for e in es:
                    count[e, f] = count.get((e, f), 0.0) + t[e, f] / z
                    total[e] = total.get(e, 0.0) + t[e, f] / z
        t = {(e, f): count.get((e, f), 0.0) / total[e] if total.get(e) else 0.0 for (e, f) in t}
    return torch.tensor([[t[e, f] for f in range(tgt_vocab)] for e in range(src_vocab + 1)])


def dense(src, tgt, src_vocab, tgt_vocab, iterations, **kwargs):
    """Our sparse table written out as (Vs + 1, Vt), zeros where a pair never co-occurs."""
    e, f, t = ibm_model1(EncodedPairs.from_rows(src, tgt), src_vocab, tgt_vocab, iterations, **kwargs)
    table = torch.zeros(src_vocab + 1, tgt_vocab, dtype=torch.float64)
    table[torch.from_numpy(e), torch.from_numpy(f)] = torch.from_numpy(t)
    return table.float()


def toy_corpus(pairs=60, vocab=10, seed=0):
    """Source word w translates to target word (w * 3) % vocab + 4 (ids from 4 up), in a shuffled order."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(pairs):
        words = [rng.randrange(4, vocab) for _ in range(rng.randint(1, 5))]
        src.append(words)
        tgt.append(rng.sample([translation(w, vocab) for w in words], len(words)))
    return src, tgt


def translation(word, vocab):
    return (word * 3) % (vocab - 4) + 4


def test_ibm1_matches_the_equations_and_finds_the_dictionary():
    src, tgt = toy_corpus()
    ours = dense(src, tgt, 10, 10, iterations=4, chunk=7)  # several chunks of pairs
    torch.testing.assert_close(ours, reference_ibm1(src, tgt, 10, 10, 4), atol=1e-5, rtol=1e-4)
    for word in range(4, 10):
        assert int(ours[word].argmax()) == translation(word, 10)


def test_ibm1_is_sparse_in_a_large_vocabulary():
    """Ids spread over a 32k x 32k vocabulary: the table holds only co-occurring pairs, each row sums to 1."""
    src, tgt = toy_corpus(pairs=200, vocab=40, seed=1)
    spread = lambda rows: [[w * 800 for w in row] for row in rows]  # noqa: E731
    e, f, t = ibm_model1(EncodedPairs.from_rows(spread(src), spread(tgt)), 32000, 32000, iterations=3)
    assert len(t) < 40 * 40 * 2 and np.allclose(np.bincount(e, weights=t)[np.unique(e)], 1.0)
    small = dense(src, tgt, 40, 40, iterations=3)
    assert np.allclose(t, small[torch.from_numpy(np.where(e == 32000, 40, e // 800)), torch.from_numpy(f // 800)], atol=1e-6)


def test_translations_are_the_top_of_each_row_of_the_table():
    src, tgt = toy_corpus(pairs=80, vocab=12, seed=3)
    table = dense(src, tgt, 12, 12, iterations=5)[:12]
    shortlist = build_shortlist(EncodedPairs.from_rows(src, tgt), 12, 12, per_source=2, frequent=3)
    for word in range(4, 12):
        assert shortlist.translations[word].tolist() == table[word].topk(2).indices.tolist()


def test_candidates_are_eos_frequent_and_translations_of_each_sentence():
    src_rows, tgt_rows = toy_corpus()
    shortlist = build_shortlist(EncodedPairs.from_rows(src_rows, tgt_rows), 10, 10, per_source=2, frequent=1)
    assert shortlist.translations.shape == (10, 2)
    assert (shortlist.translations[[PAD, BOS, EOS]] == EOS).all()  # specials add only </s>
    src, lengths = sources(seed=2, batch=4)
    src = src.clamp(max=9)
    ids, allowed = shortlist.candidates(src, lengths)
    assert ids[0] == EOS and PAD not in ids.tolist() and BOS not in ids.tolist()
    assert ids[1:].tolist() == sorted(ids[1:].tolist())
    for b in range(4):
        expected = {EOS, *shortlist.frequent.tolist()}
        for word in src[: lengths[b], b].tolist():
            expected |= set(shortlist.translations[word].tolist())
        assert set(ids[allowed[b]].tolist()) == expected - {PAD, BOS}


def full_shortlist(model):
    """Every target id for every source id: search must then equal the exact search."""
    vocab = model.config.tgt_vocab_size
    return Shortlist(torch.arange(vocab).expand(model.config.src_vocab_size, -1).clone(), torch.arange(vocab))


def random_shortlist(model, per_source=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(4, model.config.tgt_vocab_size, (model.config.src_vocab_size, per_source), generator=g)
    return Shortlist(table, torch.tensor([4]))


def test_a_shortlist_of_everything_changes_nothing():
    model = model_with(dict(attention=True, bidirectional_encoder=True))
    with torch.no_grad():  # a shortlist never lists <pad> / <s>; give them no mass in the full softmax either
        model.output.bias[[PAD, BOS]] = -1e4
    src, lengths = sources(batch=6)
    exact = beam_search(model, src, lengths, beam_size=4, alpha=0.6, nbest=2)
    listed = beam_search(model, src, lengths, beam_size=4, alpha=0.6, nbest=2, shortlist=full_shortlist(model))
    for a, b in zip(exact, listed):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


@pytest.mark.parametrize("variant", [dict(attention=False), dict(attention=True, input_feeding=True),
                                     dict(attention=True, bidirectional_encoder=True)])
def test_search_over_a_shortlist_scores_teacher_forcing_renormalised(variant):
    model = model_with(variant, tgt_vocab=12)
    shortlist = random_shortlist(model)
    src, lengths = sources(seed=4, batch=5)
    found = beam_search(model, src, lengths, beam_size=3, alpha=0.6, nbest=2, shortlist=shortlist)
    for b, hyps in enumerate(found):
        one_src, one_len = src[: lengths[b], b : b + 1], lengths[b : b + 1]
        ids, allowed = shortlist.candidates(one_src, one_len)
        permitted = set(ids[allowed[0]].tolist())
        alone = beam_search(model, one_src, one_len, beam_size=3, alpha=0.6, nbest=2, shortlist=shortlist)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in hyps]  # the batch does not matter
        for h in hyps:
            assert set(h.tokens) <= permitted
            tgt = torch.tensor([BOS, *h.tokens, EOS]).unsqueeze(1)
            memory, state = model.encode(one_src, one_len)
            logits = model.output(model.decode(tgt[:-1], state, memory)[0])[:, 0]  # (T, V)
            mask = torch.full((logits.shape[-1],), float("-inf"))
            mask[list(permitted)] = 0.0
            forced = torch.log_softmax(logits + mask, dim=-1).gather(1, tgt[1:]).sum().item()
            assert h.log_prob == pytest.approx(forced, abs=1e-4)
            assert h.score == pytest.approx(forced / length_penalty(len(h.tokens) + 1, 0.6), abs=1e-4)


def test_save_load_round_trip_and_vocabulary_check(tmp_path):
    shortlist = build_shortlist(EncodedPairs.from_rows(*toy_corpus()), 10, 10, per_source=3, frequent=2)
    assert load_shortlist(tmp_path, 10, 10) is None
    shortlist.save(tmp_path / "shortlist.safetensors")
    loaded = load_shortlist(tmp_path, 10, 10)
    assert torch.equal(loaded.translations, shortlist.translations) and torch.equal(loaded.frequent, shortlist.frequent)
    with pytest.raises(UserError, match="other vocabularies"):
        load_shortlist(tmp_path, 12, 10)
    assert loaded.tokenizers is None and load_shortlist(tmp_path, 10, 10, ("a", "b")) is not None  # nothing to compare
    dataclasses.replace(shortlist, tokenizers=("a", "b")).save(tmp_path / "shortlist.safetensors")
    assert load_shortlist(tmp_path, 10, 10, ("a", "b")).tokenizers == ("a", "b")
    with pytest.raises(UserError, match=r"other SentencePiece models than the model's \(fingerprints a,b, the model's a,c\)"):
        load_shortlist(tmp_path, 10, 10, ("a", "c"))
    (tmp_path / "shortlist.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="not a readable shortlist"):
        load_shortlist(tmp_path, 10, 10)
