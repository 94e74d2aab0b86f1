import math

import pytest
import torch
import torch.nn.functional as F

from seq2seq.data.word_corpus import batchify
from seq2seq.language_model import LanguageModel, LanguageModelConfig, evaluate_nll


def test_every_parameter_starts_uniform_in_init_scale():
    model = LanguageModel(LanguageModelConfig(vocab_size=50, hidden_size=16, init_scale=0.05))
    for name, p in model.named_parameters():
        assert p.abs().max() <= 0.05, name
        assert p.abs().max() > 0.04, name  # really spread over the range, biases included


def test_loss_equals_cross_entropy_of_logits():
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(vocab_size=30, hidden_size=8, dropout=0.0)).eval()
    tokens, targets = torch.randint(0, 30, (6, 4)), torch.randint(0, 30, (6, 4))
    logits, state = model(tokens)
    nll, state2 = model(tokens, None, targets)
    assert logits.shape == (6, 4, 30) and state[0].shape == (2, 4, 8)
    torch.testing.assert_close(nll, F.cross_entropy(logits.reshape(-1, 30), targets.reshape(-1), reduction="sum"))
    torch.testing.assert_close(state2[1], state[1])


def test_uniform_model_has_perplexity_equal_to_vocabulary_size():
    model = LanguageModel(LanguageModelConfig(vocab_size=37, hidden_size=8))
    torch.nn.init.zeros_(model.output.weight)
    torch.nn.init.zeros_(model.output.bias)
    data = batchify(torch.randint(0, 37, (203,)), 4)
    nll, tokens = evaluate_nll(model, data, unroll=7)
    assert tokens == (len(data) - 1) * 4
    assert math.exp(nll / tokens) == pytest.approx(37.0, rel=1e-5)


def test_evaluation_is_independent_of_unroll_length():
    torch.manual_seed(1)
    model = LanguageModel(LanguageModelConfig(vocab_size=20, hidden_size=8, dropout=0.5))
    data = batchify(torch.randint(0, 20, (150,)), 3)
    nll_a, n_a = evaluate_nll(model, data, unroll=5)
    nll_b, n_b = evaluate_nll(model, data, unroll=49)
    assert n_a == n_b
    assert nll_a == pytest.approx(nll_b, rel=1e-5)
    assert model.training  # restored


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        LanguageModelConfig(dropout_mode="sometimes")
    with pytest.raises(ValueError):
        LanguageModelConfig(hidden_size=0)
