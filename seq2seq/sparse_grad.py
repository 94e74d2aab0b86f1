"""Row-sparse embedding gradients: plain SGD touching only the rows of the words in a batch, with the dense
update's bits.

Zaremba et al. train with plain SGD (Sec. 4.1). A PTB small step's 20 x 20 words touch at most 400 of the
embedding's 10,000 rows, yet the dense gradient costs three passes over the whole (V, E) matrix: zero-fill and
add (the backward), its norm (clipping), its update (SGD); about 1 ms a step at PTB small's size on 2 cores, 4 %
of the step. With `Embedding.sparse` the gradient is a coalesced sparse tensor instead:

- its rows are the distinct words in increasing order, each the sum of its positions' gradients in the order
  torch's dense backward adds them (the same kernel, over distinct words instead of the vocabulary), so the
  dense form is the dense gradient bit for bit;
- `norm` gives torch.linalg.vector_norm of the dense form, bit for bit, from the touched rows (a compiled
  kernel that sums in the dense norm's lanes and order, checked against torch once per process; otherwise
  the dense form's norm);
- torch.optim.SGD adds a sparse gradient to the touched rows alone, p + (-lr) g with the dense add's rounding,
  and leaves the rest as the dense update would (p + (-lr) 0 == p).

So a recorded run repeats exactly. `enable` turns it on where that holds: torch.optim.SGD without momentum or
weight decay, one process, on a CPU (on a GPU the dense passes are cheap and collective communication wants
dense gradients).
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native


class Embedding(nn.Embedding):
    """nn.Embedding whose `sparse` gradient is exact: coalesced, the dense gradient's rows bit for bit (torch's
    own sparse gradient lists each position's row and sums repeats in another order)."""

    def forward(self, tokens: Tensor) -> Tensor:
        if not self.sparse:
            return super().forward(tokens)
        return _RowSparseLookup.apply(self.weight, tokens)


class _RowSparseLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: Tensor, tokens: Tensor) -> Tensor:
        ctx.save_for_backward(tokens)
        ctx.weight_shape = weight.shape
        return F.embedding(tokens, weight)  # (*tokens.shape, E)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (tokens,) = ctx.saved_tensors
        rows, position_row = torch.unique(tokens.reshape(-1), sorted=True, return_inverse=True)  # (U,), (N,)
        # torch's dense backward, over the U distinct words: row u = 0 + g_i + g_j + ... in position order
        values = torch.ops.aten.embedding_dense_backward(grad, position_row.view(tokens.shape), rows.numel(),
                                                         -1, False)  # (U, E)
        sparse = torch.sparse_coo_tensor(rows.unsqueeze(0), values, ctx.weight_shape, is_coalesced=True,
                                         check_invariants=False)
        return sparse, None


def enable(model: nn.Module, optimizer, device: torch.device | str, processes: int = 1,
           accumulation_steps: int = 1) -> int:
    """Give every seq2seq Embedding of `model` sparse gradients where the updates stay the dense ones bit for
    bit: `optimizer` (or the one an accelerate wrapper holds) is torch.optim.SGD without momentum or weight
    decay, one process, no gradient accumulation, a CPU. Returns how many embeddings were switched on."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    plain_sgd = type(optimizer) is torch.optim.SGD and all(
        group["momentum"] == 0 and group["weight_decay"] == 0 for group in optimizer.param_groups)
    if not (plain_sgd and processes == 1 and accumulation_steps == 1 and torch.device(device).type == "cpu"):
        return 0
    switched = 0
    for module in model.modules():
        if isinstance(module, Embedding) and module.padding_idx is None and module.max_norm is None \
                and not module.scale_grad_by_freq:
            module.sparse = True
            switched += 1
    return switched


def norm(grad: Tensor) -> Tensor:
    """torch.linalg.vector_norm(grad.to_dense()) of a sparse gradient from `Embedding` (sparse_dim 1), bit for
    bit, reading only its touched rows where the compiled kernel is available and agrees with torch here."""
    kernel = _checked_kernel()
    if kernel is None or grad.dtype != torch.float32 or grad.device.type != "cpu" or grad.sparse_dim() != 1:
        return torch.linalg.vector_norm(grad.to_dense())
    if not grad.is_coalesced():  # autograd's shallow copy of the backward's gradient drops the flag
        rows = grad._indices()[0]
        if not bool((rows[1:] > rows[:-1]).all()):  # repeated rows (two backward passes): summed first
            return torch.linalg.vector_norm(grad.to_dense())
        grad._coalesced_(True)  # increasing, distinct rows: it is coalesced
    values = grad._values()
    return kernel.sparse_rows_norm(values.reshape(values.shape[0], -1).contiguous(), grad._indices()[0],
                                   grad.numel())


def _dense_rows_norm(kernel, shape: tuple[int, int], touched: Tensor, generator: torch.Generator) -> bool:
    dense = torch.zeros(shape)
    dense[touched] = torch.randn(len(touched), shape[1], generator=generator) * torch.rand(
        len(touched), 1, generator=generator) * 10
    ours = kernel.sparse_rows_norm(dense[touched].contiguous(), touched, dense.numel())
    return bool(torch.equal(ours, torch.linalg.vector_norm(dense)))


@functools.cache
def _checked_kernel():
    """The compiled kernel if it matches torch's dense norm on this machine (shapes with and without lane-aligned
    rows and a tail, first and last rows touched), else None with one line saying so."""
    kernel = native.sparse_norm_kernel()
    if kernel is None:
        return None
    generator = torch.Generator().manual_seed(0)
    cases = [((10000, 200), torch.tensor([0, 7, 8, 9999])), ((300, 650), torch.arange(0, 300, 3)),
             ((61, 37), torch.arange(61)), ((13, 1), torch.tensor([2, 9, 12]))]
    cases += [((101, 8 * k + tail), torch.tensor([0, 50, 100])) for k, tail in enumerate(range(1, 8))]
    if all(_dense_rows_norm(kernel, shape, rows, generator) for shape, rows in cases):
        return kernel
    print("seq2seq: the sparse-gradient norm kernel does not match torch's norm on this machine; "
          "taking the norm of the dense form instead", file=sys.stderr)
    return None
