"""Where dropout goes in a stacked LSTM: the four placements this toolkit compares.

Zaremba, Sutskever & Vinyals (2014), Sec. 3: "apply the dropout operator only to the non-recurrent
connections", i.e. h^{l-1}_t -> h^l_t (Eq. in Fig. 2: D(h^{l-1}_t)), never h^l_{t-1} -> h^l_t.

Masks are explicit tensors so that a test, or a curious user, can hand the LSTM the exact masks it
should use and check the result against the equations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .native import dropout_mask_kernel

DROPOUT_MODES = ("zaremba", "variational", "naive", "none")


@dataclass(frozen=True)
class DropoutMasks:
    """Multiplicative masks for one forward pass, already scaled by 1 / (1 - p).

    A mask of shape (T, B, D) is fresh at every time step; (1, B, D) is one mask per sequence,
    broadcast over time.

    inputs[l]: on the input of layer l (the embeddings for l = 0, else layer l-1's output).
    output: on the top layer's output, before the softmax; None where the model that owns the stack
        drops a different vector before its softmax (the translator with attention, seq2seq.translator).
    recurrent[l]: on h_{t-1} where it enters layer l's gates; None when the mode keeps the
        recurrent path clean.
    """

    inputs: tuple[Tensor, ...]
    output: Tensor | None
    recurrent: tuple[Tensor, ...] | None = None

    def at(self, t: int) -> DropoutMasks:
        """The masks of time step t alone, for a decoder that runs one step at a time."""

        def pick(mask: Tensor) -> Tensor:
            return mask if mask.shape[0] == 1 else mask[t : t + 1]

        recurrent = None if self.recurrent is None else tuple(map(pick, self.recurrent))
        output = None if self.output is None else pick(self.output)
        return DropoutMasks(tuple(map(pick, self.inputs)), output, recurrent)


def check_dropout(dropout: float, dropout_mode: str) -> None:
    """Raise ValueError for a mode outside DROPOUT_MODES or p outside [0, 1)."""
    if dropout_mode not in DROPOUT_MODES:
        raise ValueError(f"dropout_mode must be one of {', '.join(DROPOUT_MODES)}, got {dropout_mode!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def bernoulli_mask(shape: tuple[int, ...], p: float, *, device=None, generator=None) -> Tensor:
    """Keep each unit with probability 1 - p and scale kept units by 1 / (1 - p).

    On the CPU, bernoulli_(q) draws one double u per unit, in order, and keeps the unit when u < q, at
    ~10 ns a unit; torch.rand draws the same doubles from the same generator about four times faster, so
    comparing them gives the same mask bit for bit and leaves the generator in the same state (checked
    for every size up to 3M units, several p, default and explicit generators): runs repeat exactly, and
    the three (20, 20, 200) masks of a PTB step cost ~1.3 ms instead of ~2.8 ms. Where it is built, a compiled
    kernel (seq2seq.native, csrc/dropout_masks.cpp) draws those doubles from the same generator a block at a time
    and gives the same mask and generator state again, bit for bit, 5-7x faster still (benchmarks/native_speed.py).
    """
    if torch.device(device or "cpu").type == "cpu":
        kernel = dropout_mask_kernel() if torch.get_default_dtype() == torch.float32 else None
        if kernel is not None:
            with torch.profiler.record_function("seq2seq::dropout_mask_kernel"):  # named in profiles
                return kernel.keep_mask(generator if generator is not None else torch.default_generator, list(shape), p)
        keep = (torch.rand(shape, dtype=torch.float64, generator=generator) < 1.0 - p).to(torch.get_default_dtype())
    else:
        keep = torch.empty(shape, device=device).bernoulli_(1.0 - p, generator=generator)
    return keep.div_(1.0 - p)


def sample_masks(
    dropout_mode: str,
    dropout: float,
    steps: int,
    batch: int,
    input_sizes: list[int],
    hidden_size: int,
    *,
    device=None,
    generator: torch.Generator | None = None,
) -> DropoutMasks | None:
    """Draw the masks that `dropout_mode` prescribes, or None when nothing is dropped.

    input_sizes[l] is the width of layer l's input. Returns masks shaped as in DropoutMasks:
    zaremba and naive draw a fresh mask per time step (T, B, D); variational one per sequence
    (1, B, D) (Gal & Ghahramani 2016, Sec. 4).
    """
    check_dropout(dropout, dropout_mode)
    if dropout_mode == "none" or dropout == 0.0:
        return None
    t = 1 if dropout_mode == "variational" else steps

    def draw(width: int) -> Tensor:
        return bernoulli_mask((t, batch, width), dropout, device=device, generator=generator)

    inputs = tuple(draw(d) for d in input_sizes)
    output = draw(hidden_size)
    recurrent = None
    if dropout_mode in ("variational", "naive"):
        recurrent = tuple(draw(hidden_size) for _ in input_sizes)
    return DropoutMasks(inputs=inputs, output=output, recurrent=recurrent)
