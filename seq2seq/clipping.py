"""Gradient clipping by global norm (Zaremba et al. 2014, Sec. 4.1: "we clip the norm of the gradients
(normalized by minibatch size) at 5"; Sutskever et al. 2014, Sec. 3.4, the same for translation).

The same arithmetic as torch.nn.utils.clip_grad_norm_, with one difference in cost: when the norm is within
the limit (the clipping coefficient clamps to 1) the gradients are left as they are instead of being
multiplied by 1.0, which changes no bit and saves a read and a write of every gradient. torch multiplies
anyway so as not to wait for the device; here the norm is already on the host (training loops log it), so
the test is free. On PTB small, about 7 % of steps clip (102 of the first 1,500 steps).

Sparse gradients (seq2seq.sparse_grad's embeddings under plain SGD) count with their dense form's norm, bit for
bit, read from their touched rows alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from . import sparse_grad


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale the gradients of `parameters` in place so that their global L2 norm is at most max_norm;
    returns the norm before clipping (a 0-dim tensor, inf or NaN passed through as torch's does)."""
    parameters = [p for p in parameters if p.grad is not None]
    norm = total_norm([p.grad for p in parameters])
    coefficient = float(max_norm) / (norm + 1e-6)  # as clip_grads_with_norm_ computes it, then clamps to 1
    if bool(coefficient < 1.0):  # NaN compares False: nothing is scaled, and the caller stops on it
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm


def total_norm(grads: list[Tensor]) -> Tensor:
    """torch.nn.utils.get_total_norm(grads) (L2), with sparse gradients counted as their dense forms."""
    if not any(g.is_sparse for g in grads):
        return torch.nn.utils.get_total_norm(grads)
    if len({(g.device, g.dtype) for g in grads}) > 1:  # torch groups the norms by device and dtype first
        return torch.nn.utils.get_total_norm([g.to_dense() if g.is_sparse else g for g in grads])
    norms = [sparse_grad.norm(g) if g.is_sparse else torch.linalg.vector_norm(g) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms))  # get_total_norm's last line, in the same order
