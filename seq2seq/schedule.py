"""Learning-rate schedules of the paper's experiments."""

from __future__ import annotations


def step_decay_lr(epoch: int, lr: float, lr_decay: float, decay_after: int) -> float:
    """SGD learning rate for 1-based `epoch`: divided by lr_decay after each epoch whose number exceeds
    decay_after (the Lua code of Zaremba et al.: `if epoch > max_epoch then lr = lr / decay`).

    PTB small (lr 1, decay 2, after 4): epochs 1-5 use 1.0, epoch 6 uses 0.5, epoch 13 uses 1/256.
    """
    return lr / lr_decay ** max(0, epoch - 1 - decay_after)
