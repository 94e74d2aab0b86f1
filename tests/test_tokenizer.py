import random

import pytest

from seq2seq.errors import UserError
from seq2seq.tokenizer import BOS, EOS, PAD, Tokenizer, load_or_train, to_tensor, train_sentencepiece


def corpus(n=300, seed=0):
    rng = random.Random(seed)
    words = ["chien", "chat", "homme", "femme", "rouge", "bleu", "court", "mange", "le", "la", "un", "une"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + "." for _ in range(n)]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_train_encode_decode_round_trip(tmp_path, model_type):
    texts = corpus()
    tok = train_sentencepiece(texts, tmp_path / "m.model", vocab_size=60, model_type=model_type)
    assert 30 < len(tok) <= 60
    ids = tok.encode(texts[:20])
    assert all(min(row) > EOS for row in ids)  # specials never appear in plain text
    assert tok.decode(ids) == texts[:20]
    assert tok.decode([[BOS] + ids[0] + [EOS, PAD]]) == [texts[0]]


def test_bounded_sample_and_reuse(tmp_path):
    path = tmp_path / "m.model"
    first = train_sentencepiece(corpus(), path, vocab_size=50, sample_size=100)
    stamp = path.stat().st_mtime_ns
    again = load_or_train(path, lambda: pytest.fail("a present model must not be retrained"), vocab_size=50)
    assert path.stat().st_mtime_ns == stamp and again.fingerprint() == first.fingerprint()


def test_bad_model_file_is_a_user_error(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        Tokenizer(tmp_path / "bad.model")
    with pytest.raises(UserError, match="no such SentencePiece model"):
        Tokenizer(tmp_path / "absent.model")


def test_to_tensor_pads_time_major():
    ids, lengths = to_tensor([[5, 6, 7], [8]], bos=True, eos=True)
    assert ids.t().tolist() == [[BOS, 5, 6, 7, EOS], [BOS, 8, EOS, PAD, PAD]] and lengths.tolist() == [5, 3]
