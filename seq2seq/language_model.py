"""The word-level LSTM language model of Zaremba et al. (2014), Sec. 4.1.

Embedding -> StackedLSTM (dropout on the embeddings, between layers and on the top output) -> softmax.
Every parameter, biases included, starts from U(-init_scale, init_scale), as in the paper's Lua code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .checkpoint import load_weights, read_config
from .data.word_corpus import window, window_starts
from .dropout import check_dropout
from .errors import UserError
from .lstm import State, StackedLSTM
from .softmax import linear_cross_entropy
from .sparse_grad import Embedding


@dataclass(frozen=True)
class LanguageModelConfig:
    """Shape and regularisation of the language model; embedding size = hidden_size, as in the paper."""

    vocab_size: int = 10000
    hidden_size: int = 200
    num_layers: int = 2
    dropout: float = 0.0
    dropout_mode: str = "zaremba"
    init_scale: float = 0.1

    def __post_init__(self):
        check_dropout(self.dropout, self.dropout_mode)
        for name in ("vocab_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class LanguageModel(nn.Module):
    """Stacked-LSTM language model over time-major token ids (T, B)."""

    def __init__(self, config: LanguageModelConfig):
        super().__init__()
        self.config = config
        self.embedding = Embedding(config.vocab_size, config.hidden_size)  # sparse gradients: seq2seq.sparse_grad
        self.lstm = StackedLSTM(config.hidden_size, config.hidden_size, config.num_layers,
                                config.dropout, config.dropout_mode)
        self.output = nn.Linear(config.hidden_size, config.vocab_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -config.init_scale, config.init_scale)

    def zero_state(self, batch: int, device=None) -> State:
        return self.lstm.zero_state(batch, device)

    def forward(self, tokens: Tensor, state: State | None = None, targets: Tensor | None = None):
        """tokens: (T, B). Without targets returns logits (T, B, V) and the final state; with targets
        (T, B) returns the summed negative log-likelihood over all T * B tokens and the final state.
        """
        hidden, state = self.lstm(self.embedding(tokens), state)  # (T, B, H)
        if targets is None:
            return self.output(hidden), state
        flat = hidden.reshape(-1, hidden.shape[-1])  # (T * B, H)
        nll = linear_cross_entropy(flat, self.output.weight, self.output.bias, targets.reshape(-1))
        return nll, state


@torch.no_grad()
def evaluate_nll(model: nn.Module, data: Tensor, unroll: int) -> tuple[float, int]:
    """Summed NLL and token count of a batchified stream data (steps, B), state carried across windows.

    Perplexity is exp(nll / tokens). The model is put in eval mode (no dropout) and restored after.
    """
    was_training = model.training
    model.eval()
    state, total, tokens = None, 0.0, 0
    for start in window_starts(len(data), unroll):
        inputs, targets = window(data, start, unroll)
        nll, state = model(inputs, state, targets)
        total += float(nll)
        tokens += targets.numel()
    model.train(was_training)
    return total, tokens


def load_language_model(directory) -> tuple[LanguageModel, list[str]]:
    """Rebuild a saved model (config.json + model.safetensors) and its vocabulary, in eval mode."""
    payload = read_config(directory)
    if payload.get("kind") != "LanguageModel":
        raise UserError(f"{directory}: holds a {payload.get('kind')}, not a LanguageModel")
    try:
        config = LanguageModelConfig(**payload["model"])
    except (TypeError, ValueError) as error:
        raise UserError(f"{directory}/config.json: invalid model config ({error})") from None
    model = load_weights(directory, LanguageModel(config))
    return model.eval(), payload.get("vocabulary", [])
