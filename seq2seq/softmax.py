"""The output layer and its loss fused: logits = h W^T + b, then summed cross-entropy.

On a CPU the softmax layer is most of a small LSTM's cost (PTB small: three (N x H) x (H x V) products
per step). Fusing the loss with the projection saves one pass of exponentials and two (N, V) buffers
compared with nn.Linear + F.cross_entropy: forward keeps only the probabilities, and backward turns
them in place into d loss / d logits = p - onehot(y).

Under bf16 autocast on a CPU the products give bf16 logits, and the loss and its gradient are read straight from
them by a compiled kernel (seq2seq.native, csrc/softmax_loss.cpp): in training one pass in the forward that
writes the loss and the gradient, instead of the eager path's ten over fp32 logits twice the size (PTB small's
layer, forward and backward with its three products, logits from memory as in a step, on an AVX-512 EPYC:
7.8-8.5 against the eager 10.0-11.2 ms, and 9.0-9.5 with the kernel's earlier pass forward and another backward;
`benchmarks/native_speed.py`, results/bench-softmax-onepass-epyc.txt).

In fp32 on a CPU the forward's seven passes over the logits (bias, target, max, subtract, exp, sum, divide) run one
row at a time in a compiled kernel (csrc/softmax_fp32.cpp), while the row is in cache, with ATen's own arithmetic:
the loss and gradients are the eager path's bit for bit. The division by each row's total moves to the backward's
single pass, the only reader of the probabilities. Its three fp32 products run in the library seq2seq.gemm picks
for the CPU (oneDNN on an AMD CPU with AVX-512, where MKL runs at half speed; MKL elsewhere).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import gemm
from .native import softmax_fp32_kernel, softmax_loss_kernel


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, dtype: torch.dtype,
                smoothing: float, keep: Tensor | None) -> Tensor:
        h_cast, weight_cast = h.to(dtype), weight.to(dtype)  # cast once, kept for the backward products
        logits = gemm.mm(h_cast, weight_cast.t()).float()  # (N, V), softmax in fp32; MKL or oneDNN (seq2seq.gemm)
        kernel = softmax_fp32_kernel() if logits.is_cpu and bias.dtype == torch.float32 else None
        if kernel is not None:  # the same passes, one row at a time, the same bits (csrc/softmax_fp32.cpp)
            with torch.profiler.record_function("seq2seq::softmax_fp32_kernel"):
                target_logit, row_sum, peak, total = kernel.forward(logits, bias.contiguous(), targets.contiguous(),
                                                                    bool(smoothing))  # each (N, 1)
            mean_logit = row_sum / logits.shape[1] if smoothing else 0.0  # mean = sum / V, as torch.mean
            probs = logits  # still to be divided by total
        else:
            logits.add_(bias)
            target_logit = logits.gather(1, targets[:, None])  # (N, 1)
            mean_logit = logits.mean(1, keepdim=True) if smoothing else 0.0  # (N, 1)
            peak = logits.amax(1, keepdim=True)  # (N, 1)
            probs = logits.sub_(peak).exp_()  # unnormalised, in place
            total = probs.sum(1, keepdim=True)  # (N, 1)
            probs.div_(total)
        log_z = total.log() + peak
        # (1 - eps) * -log p_y + eps * mean_v(-log p_v), the definition F.cross_entropy uses
        loss = (1.0 - smoothing) * (log_z - target_logit) + smoothing * (log_z - mean_logit)
        if keep is not None:
            loss = loss * keep
        ctx.save_for_backward(h_cast, weight_cast, targets, probs, keep, total)
        ctx.dtypes, ctx.smoothing, ctx.kernel = (h.dtype, weight.dtype), smoothing, kernel
        return loss.sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        h_cast, weight_cast, targets, probs, keep, total = ctx.saved_tensors
        grad_logits = probs  # reused in place: this graph can be backpropagated once
        if ctx.kernel is not None:  # its probs are not divided by their total yet: the kernel does that first
            with torch.profiler.record_function("seq2seq::softmax_fp32_kernel"):
                ctx.kernel.backward(grad_logits, total, targets.contiguous(), ctx.smoothing, keep, float(grad))
        else:
            grad_logits[torch.arange(len(targets), device=targets.device), targets] -= 1.0 - ctx.smoothing
            if ctx.smoothing:
                grad_logits.sub_(ctx.smoothing / probs.shape[1])
            if keep is not None:
                grad_logits.mul_(keep)
            grad_logits.mul_(grad)
        grad_bias = grad_logits.sum(0)  # (V,)
        grad_logits = grad_logits.to(weight_cast.dtype)
        grad_h = gemm.mm(grad_logits, weight_cast)  # (N, H)
        grad_weight = gemm.mm(grad_logits.t(), h_cast)  # (V, H)
        return grad_h.to(ctx.dtypes[0]), grad_weight.to(ctx.dtypes[1]), grad_bias, None, None, None, None


class _BF16LinearCrossEntropy(torch.autograd.Function):
    """The same loss with bf16 products and the softmax's element-wise work in the compiled kernel (CPU).

    In training the kernel's one pass over the logits also writes the gradient d loss / d logits over them (the
    exponentials once, not again in the backward); the backward's products apply d total / d loss as their
    scale (alpha), in fp32 before their bf16 results are rounded."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, smoothing: float,
                keep: Tensor | None, with_gradient: bool) -> Tensor:
        kernel = softmax_loss_kernel()
        h_cast, weight_cast = h.to(torch.bfloat16), weight.to(torch.bfloat16)  # kept for the backward products
        logits = torch.mm(h_cast, weight_cast.t())  # (N, V) bf16, without the bias
        bias32, targets = bias.float().contiguous(), targets.contiguous()
        ctx.dtypes = (h.dtype, weight.dtype, bias.dtype)
        with torch.profiler.record_function("seq2seq::softmax_loss_kernel"):  # named in profiles
            if with_gradient:  # logits become d sum_i keep_i loss_i / d logits (N, V) bf16
                scale = keep.reshape(-1).contiguous() if keep is not None else torch.ones(len(targets))
                loss, grad_bias = kernel.loss_and_gradient(logits, bias32, targets, scale, smoothing)  # (N,), (V,)
                ctx.save_for_backward(h_cast, weight_cast, logits, grad_bias)
            else:
                _, loss = kernel.forward(logits, bias32, targets, smoothing)  # (N,)
        if keep is not None:
            loss = loss * keep.reshape(-1)
        return loss.sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        h_cast, weight_cast, grad_logits, grad_bias = ctx.saved_tensors
        scale, unused = float(grad), grad_logits.new_zeros(())  # addmm's input, ignored with beta=0
        grad_h = torch.addmm(unused, grad_logits, weight_cast, beta=0, alpha=scale)  # (N, H)
        grad_weight = torch.addmm(unused, grad_logits.t(), h_cast, beta=0, alpha=scale)  # (V, H)
        return (grad_h.to(ctx.dtypes[0]), grad_weight.to(ctx.dtypes[1]), (grad_bias * scale).to(ctx.dtypes[2]),
                None, None, None, None)


def linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, label_smoothing: float = 0.0,
                         ignore_index: int | None = None) -> Tensor:
    """Sum over rows of the (label-smoothed) cross-entropy of softmax(h W^T + b) against targets.

    h: (N, H); weight: (V, H); bias: (V,); targets: (N,) int64; rows whose target is ignore_index
    count zero. Returns a scalar equal to F.cross_entropy(F.linear(h, weight, bias), targets,
    reduction="sum", label_smoothing=..., ignore_index=...). Under autocast the three matrix products
    run in the autocast dtype (bf16) and the softmax in fp32.
    """
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    keep = None
    if ignore_index is not None:
        keep = (targets != ignore_index).float().unsqueeze(1)  # (N, 1)
        targets = targets.masked_fill(targets == ignore_index, 0)
    with torch.autocast(device, enabled=False):
        if dtype == torch.bfloat16 and device == "cpu" and softmax_loss_kernel() is not None:
            with_gradient = torch.is_grad_enabled() and any(t.requires_grad for t in (h, weight, bias))
            return _BF16LinearCrossEntropy.apply(h, weight, bias, targets, label_smoothing, keep, with_gradient)
        return _LinearCrossEntropy.apply(h, weight, bias, targets, dtype, label_smoothing, keep)
