"""The LSTM acoustic model of Zaremba et al. (2014), Sec. 4.3: a stacked LSTM over filterbank frames
with dropout on the vertical connections only, and a classifier on top.

Two objectives: framewise cross-entropy over the 48 training phones (the paper's setting, scored as
frame accuracy on 39 classes), and CTC (Graves et al. 2006) over blank + 48 phones, scored as phone
error rate on 39 classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .dropout import check_dropout
from .lstm import StackedLSTM
from .speech.features import IGNORE
from .speech.phones import PHONES_48

OBJECTIVES = ("frame", "ctc")


@dataclass(frozen=True)
class AcousticModelConfig:
    input_size: int = 40
    hidden_size: int = 256
    num_layers: int = 3
    bidirectional: bool = True
    dropout: float = 0.2
    dropout_mode: str = "zaremba"
    objective: str = "frame"
    init_scale: float = 0.1

    def __post_init__(self):
        check_dropout(self.dropout, self.dropout_mode)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")

    @property
    def num_classes(self) -> int:
        """48 phones, plus the blank (class 0) under CTC."""
        return len(PHONES_48) + (self.objective == "ctc")


class AcousticModel(nn.Module):
    def __init__(self, config: AcousticModelConfig):
        super().__init__()
        self.config = c = config
        self.lstm = StackedLSTM(c.input_size, c.hidden_size, c.num_layers, c.dropout, c.dropout_mode,
                                bidirectional=c.bidirectional)
        self.classifier = nn.Linear(c.hidden_size, c.num_classes)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -c.init_scale, c.init_scale)
        # Feature normalisation travels with the weights (set from training data; identity by default).
        self.register_buffer("input_mean", torch.zeros(c.input_size))
        self.register_buffer("input_inv_std", torch.ones(c.input_size))

    def forward(self, features: Tensor, lengths: Tensor) -> Tensor:
        """features: (T, B, input_size) right-padded; lengths: (B,). Returns logits (T, B, classes);
        the LSTM's top output is already dropped out (zaremba: the top layer -> classifier connection)."""
        features = (features - self.input_mean) * self.input_inv_std
        top = self.lstm.outputs(features, lengths)  # (T, B, H)
        return self.classifier(top)

    def loss(self, logits: Tensor, lengths: Tensor, labels: Tensor, phones: Tensor, phone_lengths: Tensor
             ) -> tuple[Tensor, Tensor]:
        """Summed loss and its normaliser. Frame: cross-entropy over frames with a label (labels (T, B),
        IGNORE at q and padding), normalised by their count. CTC: summed over utterances, normalised by
        their count; phones (B, P) 0-based, phone_lengths (B,)."""
        if self.config.objective == "frame":
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                               ignore_index=IGNORE, reduction="sum")
            return loss, (labels != IGNORE).sum()
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (T, B, C)
        loss = nn.functional.ctc_loss(log_probs, phones + 1, lengths, phone_lengths, blank=0, reduction="sum",
                                      zero_infinity=True)
        return loss, torch.tensor(len(lengths), device=logits.device)
