"""The LSTM recurrence with a dropout mask on h_{t-1}, as one autograd node with a hand-written backward.

`variational` and `naive` dropout (Gal & Ghahramani 2016; Zaremba et al. 2014, Sec. 3.1, where dropout on the
recurrent connections is what the paper argues against) multiply h_{t-1} by a mask inside the recurrence, which
no fused LSTM kernel does, so these placements run a step loop. Left to autograd, each step records a dozen
nodes (the product, four activations, the cell's products and sums, the mask) and the backward pass walks
them one by one; the recurrent weight's gradient comes as T small products and T additions. Here the forward
loop writes every step's gates and states into preallocated (T, ...) buffers, and the backward loop applies
the cell's derivatives directly:

    a = [i, f, g, o] = act(x_proj_t + h_in_t W_hh^T)   (sigmoid; tanh for g)   h_in_t = h_{t-1} * mask_t
    c_t = f c_{t-1} + i g,   h_t = o tanh(c_t)
    dc  = dh o (1 - tanh^2 c_t) + dc_{t+1}
    d[i, f, g, o] = [dc g i (1 - i),  dc c_{t-1} f (1 - f),  dc i (1 - g^2),  dh tanh(c_t) o (1 - o)]
    dh_{t-1} = (d a_t W_hh) * mask_t,   dc_{t-1} = dc f

so that the gradient of the input half x_proj is the stacked d a (no copy) and the recurrent weight's is one
product over all T * B rows. Same mathematics as the autograd loop (checked against it in float64); on PTB
small's layer (T = B = 20, u = 200) forward + backward take ~5 ms instead of ~11.

Layout: D directions run as a batch of the loop (the bidirectional case); u units per direction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import gemm
from .native import recurrence_kernel


class MaskedLSTMRecurrence(torch.autograd.Function):
    """hs, cs = MaskedLSTMRecurrence.apply(x_proj, w_hh, h0, c0, h_mask)

    x_proj: (T, D, B, 4u) the input half of the gates with both biases (x W_ih^T + b_ih + b_hh);
    w_hh: (D, 4u, u) the recurrent weights (nn.LSTM's layout); h0, c0: (D, B, u);
    h_mask: (T, D, B, u) fresh per step, (1, D, B, u) shared by all steps, or None (no gradient taken).
    Returns every step's hidden and cell states hs, cs: (T, D, B, u) each, in the state dtype (h0's).
    The products run in x_proj's dtype (bf16 under autocast), the cell state in h0's.

    Only what lies on the recurrence's path runs step by step (the product, the activations, the cell); the
    factors the backward step multiplies by are computed for all T steps at once before its loop, so that each
    backward step is five element-wise operations and one product: jac (T, D, B, 4u) = [i' g, f' c_{t-1},
    g' i, o' tanh c_t] (x' the activation's derivative: x (1 - x) for a sigmoid, 1 - x^2 for tanh), the
    factors by which dc (for i, f, g) and dh (for o) become the gates' gradient, and k (T, D, B, u) =
    o (1 - tanh^2 c_t), the factor from dh_t to dc_t. At these sizes a small element-wise operation costs its
    dispatch more than its arithmetic, so fewer of them per step is what makes the loop fast.
    """

    @staticmethod
    def forward(ctx, x_proj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, h_mask: Tensor | None):
        steps, (directions, batch, units) = x_proj.shape[0], h0.shape
        with torch.autocast(x_proj.device.type, enabled=False):
            w = w_hh.to(x_proj.dtype)  # (D, 4u, u)
            w_t = w.transpose(1, 2).contiguous()  # (D, u, 4u): the in-place product below is ~1.5x faster on it
            gates = x_proj.clone()  # (T, D, B, 4u): x_proj, then the pre-activations, then the activations
            h_in, hs, cs, tanh_cs = (h0.new_empty(steps, directions, batch, units) for _ in range(4))
            kernel = recurrence_kernel() if gates.device.type == "cpu" else None
            onednn = _onednn(w)
            if kernel is not None:  # the loop below in C++, bit for bit
                kernel.forward_steps(gates, w_t, h0, c0, h_in, hs, cs, tanh_cs, h_mask, onednn)
            else:
                _forward_steps(gates, w_t, h0, c0, h_in, hs, cs, tanh_cs, h_mask, onednn)
        ctx.save_for_backward(w, c0, h_mask, gates, h_in, hs, cs, tanh_cs)
        ctx.set_materialize_grads(False)
        ctx.w_dtype, ctx.onednn = w_hh.dtype, onednn
        return hs, cs

    @staticmethod
    def backward(ctx, grad_hs: Tensor | None, grad_cs: Tensor | None):
        w, c0, h_mask, gates, h_in, hs, cs, tanh_cs = ctx.saved_tensors
        directions, units = h_in.shape[1], h_in.shape[3]
        with torch.autocast(gates.device.type, enabled=False):
            jac, k = _local_derivatives(gates, c0, hs, cs, tanh_cs)
            grad_gates = torch.empty_like(gates)  # (T, D, B, 4u)
            kernel = recurrence_kernel() if gates.device.type == "cpu" else None
            steps_backward = kernel.backward_steps if kernel is not None else _backward_steps
            onednn = ctx.onednn  # the forward's library, so that both halves of the node use one
            grad_h0, grad_c0 = steps_backward(grad_gates, gates, jac, k, w, h_in, grad_hs, grad_cs, h_mask, onednn)
            grad_w = None
            if ctx.needs_input_grad[1]:  # sum over steps and batch of d a^T h_in: (D, 4u, T*B) x (D, T*B, u)
                flat = grad_gates.transpose(0, 1).reshape(directions, -1, 4 * units)
                rows = h_in.transpose(0, 1).reshape(directions, -1, units).to(flat.dtype)
                grad_w = (torch.stack([gemm.mm(flat[d].t(), rows[d]) for d in range(directions)]) if onednn
                          else torch.bmm(flat.transpose(1, 2), rows)).to(ctx.w_dtype)
        return grad_gates, grad_w, grad_h0, grad_c0, None


def _onednn(w: Tensor) -> bool:
    """Whether the recurrence's fp32 products run in oneDNN (seq2seq.gemm: an AMD CPU with AVX-512) or MKL."""
    return gemm.in_onednn(w)


def _products(a: Tensor, b: Tensor, onednn: bool) -> Tensor:
    """torch.bmm(a, b) for a (D, B, k), b (D, k, n); with onednn a direction at a time in oneDNN, b[d] read
    through its transpose as the weight (no copy). csrc/recurrence.cpp's `products`."""
    if not onednn:
        return torch.bmm(a, b)
    out = [gemm.linear(a[d], b[d].t()) for d in range(a.shape[0])]
    return out[0].unsqueeze(0) if len(out) == 1 else torch.stack(out)


def _forward_steps(gates: Tensor, w_t: Tensor, h0: Tensor, c0: Tensor, h_in: Tensor, hs: Tensor, cs: Tensor,
                   tanh_cs: Tensor, h_mask: Tensor | None, onednn: bool = False) -> None:
    """The forward loop (csrc/recurrence.cpp is the same in C++): fills h_in, hs, cs, tanh_cs (T, D, B, u) and turns
    gates (T, D, B, 4u) from x_proj into the activations. w_t: (D, u, 4u); onednn: the products in oneDNN."""
    steps, units = gates.shape[0], h0.shape[-1]
    i, f, g, o = _steps(gates, units)
    sigmoid_if = gates[..., :2 * units].unbind(0)
    gates_t, h_in_t = gates.unbind(0), h_in.unbind(0)
    hs_t, cs_t, tanh_cs_t = hs.unbind(0), cs.unbind(0), tanh_cs.unbind(0)
    masks = _per_step(h_mask, steps)
    h, c = h0, c0
    for t in range(steps):
        h = h_in_t[t].copy_(h) if masks[t] is None else torch.mul(h, masks[t], out=h_in_t[t])
        if onednn:  # (D, B, 4u) pre-activations
            gates_t[t].add_(_products(h.to(w_t.dtype), w_t, True))
        else:
            gates_t[t].baddbmm_(h.to(w_t.dtype), w_t)
        sigmoid_if[t].sigmoid_()
        g[t].tanh_()
        o[t].sigmoid_()
        c = torch.mul(f[t], c, out=cs_t[t]).addcmul_(i[t], g[t])  # (D, B, u)
        h = torch.mul(o[t], torch.tanh(c, out=tanh_cs_t[t]), out=hs_t[t])


def _backward_steps(grad_gates: Tensor, gates: Tensor, jac: Tensor, k: Tensor, w: Tensor, h_in: Tensor,
                    grad_hs: Tensor | None, grad_cs: Tensor | None, h_mask: Tensor | None, onednn: bool = False):
    """The backward loop (csrc/recurrence.cpp is the same in C++): fills grad_gates (T, D, B, 4u) and returns the
    gradients at h0 and c0 (None where none reaches them). jac, k: _local_derivatives; w: (D, 4u, u)."""
    steps, (directions, batch, units) = gates.shape[0], h_in.shape[1:]
    f, grad_t, k_t = _steps(gates, units)[1], grad_gates.unbind(0), k.unbind(0)
    jac_ifg = jac.view(steps, directions, batch, 4, units)[:, :, :, :3].unbind(0)  # T x (D, B, 3, u)
    jac_o = jac[..., 3 * units:].unbind(0)
    grad_ifg = grad_gates.view(steps, directions, batch, 4, units)[:, :, :, :3].unbind(0)
    grad_o = grad_gates[..., 3 * units:].unbind(0)
    grad_hs_t, grad_cs_t, masks = (_per_step(x, steps) for x in (grad_hs, grad_cs, h_mask))
    dh_in = mask = dc = None  # from the step after: the gradient at its h_in and its mask; at c_t
    for t in reversed(range(steps)):
        dh, dc = _through_mask(grad_hs_t[t], dh_in, mask), _sum(grad_cs_t[t], dc)
        if dh is None and dc is None:  # no gradient has reached this step yet
            grad_t[t].zero_()
            continue
        if dh is None:
            grad_o[t].zero_()
        else:
            torch.mul(jac_o[t], dh, out=grad_o[t])
            dc = dh * k_t[t] if dc is None else torch.addcmul(dc, dh, k_t[t])
        torch.mul(jac_ifg[t], dc.unsqueeze(-2), out=grad_ifg[t])
        dc = dc * f[t]  # to c_{t-1}
        dh_in, mask = _products(grad_t[t], w, onednn).to(h_in.dtype), masks[t]  # (D, B, u)
    return _through_mask(None, dh_in, mask), dc


def _local_derivatives(gates: Tensor, c0: Tensor, hs: Tensor, cs: Tensor, tanh_cs: Tensor) -> tuple[Tensor, Tensor]:
    """jac (T, D, B, 4u) = [i' g, f' c_{t-1}, g' i, o' tanh c_t] and k (T, D, B, u) = o (1 - tanh^2 c_t), for
    all steps at once. gates: activations (T, D, B, 4u); hs, cs, tanh_cs: (T, D, B, u); c0: (D, B, u)."""
    units = cs.shape[-1]
    jac = torch.addcmul(gates, gates, gates, value=-1)  # x (1 - x): the sigmoids' derivative
    i, f, g, o = gates.split(units, -1)
    ji, jf, jg, jo = jac.split(units, -1)
    torch.addcmul(gates.new_ones(()), g, g, value=-1, out=jg)  # tanh's: 1 - g^2
    ji.mul_(g)
    jf[0].mul_(c0)
    jf[1:].mul_(cs[:-1])
    jg.mul_(i)
    jo.mul_(tanh_cs)
    return jac, torch.addcmul(o, hs, tanh_cs, value=-1)  # o - o tanh^2 c


def _steps(gates: Tensor, units: int) -> list[tuple[Tensor, ...]]:
    """The four gates' columns of (T, ..., 4u), each as T per-step views (unbinding once is cheaper than
    indexing every step)."""
    return [gates[..., n * units:(n + 1) * units].unbind(0) for n in range(4)]


def _per_step(x: Tensor | None, steps: int) -> list | tuple[Tensor, ...]:
    """x (T or 1, ...) as T per-step views (a (1, ...) tensor is the same at every step); None: T Nones."""
    return [None] * steps if x is None else x.expand(steps, *x.shape[1:]).unbind(0)


def _through_mask(grad: Tensor | None, dh_in: Tensor | None, mask: Tensor | None) -> Tensor | None:
    """grad + dh_in * mask (the gradient reaching h_t directly and through the next step's masked input), in
    one operation; any of them may be None (no gradient; no mask)."""
    if dh_in is None:
        return grad
    if mask is None:
        return _sum(grad, dh_in)
    return dh_in * mask if grad is None else torch.addcmul(grad, dh_in, mask)


def _sum(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b
