"""Learning-rate schedules of the paper's experiments."""

from __future__ import annotations


def step_decay_lr(epoch: int, lr: float, lr_decay: float, decay_after: int) -> float:
    """SGD learning rate for 1-based `epoch`: divided by lr_decay after each epoch whose number exceeds
    decay_after (the Lua code of Zaremba et al.: `if epoch > max_epoch then lr = lr / decay`).

    PTB small (lr 1, decay 2, after 4): epochs 1-5 use 1.0, epoch 6 uses 0.5, epoch 13 uses 1/256.
    """
    return lr / lr_decay ** max(0, epoch - 1 - decay_after)


def halving_lr(epoch: float, lr: float, halve_from: float = 5.0, every: float = 0.5) -> float:
    """Sutskever et al. (2014), Sec. 3.4: "After 5 epochs, we begun halving the learning rate every half
    epoch." epoch is fractional progress (steps / steps per epoch)."""
    if epoch < halve_from:
        return lr
    return lr / 2 ** (int((epoch - halve_from) // every) + 1)


def linear_lr(step: int, lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over warmup_steps, then linear decay to zero at total_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
