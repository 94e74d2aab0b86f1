"""Which library multiplies fp32 matrices on this CPU: MKL (torch.mm) or oneDNN.

torch's CPU wheel runs a float32 `torch.mm` in MKL, and MKL takes its AVX-512 code only on Intel CPUs: on an AMD
EPYC with AVX-512 its log names no instruction set ("Intel(R) Architecture processors") and a 2048^2 product runs
at 213 GFLOP/s on 2 cores where oneDNN, the library behind torch's LSTM layers, reaches 459 in float32 too
(`benchmarks/roofline.py`, "A ceiling that holds on every CPU" in the README). There the softmax layer's three
products (seq2seq.softmax) and search's fp32 products (seq2seq.products) run in oneDNN; everywhere else they stay
in MKL, whose rounding every recorded fp32 run was made with.

The choice is made from the CPU, never from a timing, so a seed still fixes the result: `SEQ2SEQ_FP32_GEMM=mkl`
or `=onednn` overrides it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import Tensor

from .errors import UserError
from .native import transpose_kernel

CHOICES = ("auto", "mkl", "onednn")


def cpu_vendor() -> str:
    """The CPU's vendor string ("AuthenticAMD", "GenuineIntel"), or "" where /proc/cpuinfo does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def fp32_library() -> str:
    """"onednn" or "mkl": the setting of SEQ2SEQ_FP32_GEMM, or by default oneDNN on an AMD CPU with AVX-512."""
    choice = os.environ.get("SEQ2SEQ_FP32_GEMM", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise UserError(f"SEQ2SEQ_FP32_GEMM={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "auto":
        amd_avx512 = cpu_vendor() == "AuthenticAMD" and torch.backends.cpu.get_cpu_capability() == "AVX512"
        choice = "onednn" if amd_avx512 else "mkl"
    return choice if choice == "mkl" or onednn_available() else "mkl"


def in_onednn(*tensors: Tensor) -> bool:
    """Whether a product of these tensors runs in oneDNN: all float32 on a CPU, and fp32_library() says oneDNN."""
    return all(t.is_cpu and t.dtype == torch.float32 for t in tensors) and fp32_library() == "onednn"


def mm(a: Tensor, b: Tensor) -> Tensor:
    """a (M, K) @ b (K, N), fp32 on a CPU in fp32_library(); anything else as torch.mm.

    oneDNN's linear layer reads its weight (here b^T) at any strides but copies a non-contiguous input, on one
    thread: a transposed a, as in a weight's gradient dW = dY^T X, cost PTB small's softmax layer a (10,000 x 400)
    transposing copy, 2.5-3.8 ms of a 29 ms step. Here the transposes are made by `transposed` (tiles, both
    cores), and where it is cheaper the product is taken the other way round, (b^T a^T)^T, transposing b and the
    (M, N) result instead of a: the same bits (oneDNN's sums over K ran in the same order either way at every
    shape tried, PTB's and the demo's among them; tested)."""
    if not in_onednn(a, b):
        return torch.mm(a, b)
    (m, k), n = a.shape, b.shape[1]
    if a.is_contiguous() or not a.t().is_contiguous():
        return linear(a, b.t())  # a (b^T)^T
    if k * n * (not b.t().is_contiguous()) + m * n < m * k:
        return transposed(linear(transposed(b), a))  # (N, K) x (M, K)^T = (a b)^T, made (M, N)
    return linear(transposed(a.t()), b.t())


def transposed(x: Tensor) -> Tensor:
    """x (R, C) as a new contiguous (C, R): the compiled tiled transpose for an fp32 CPU matrix with unit column
    stride (seq2seq.native; 0.6 against ATen's 1.1-1.7 ms for PTB's (200 x 10,000)), else torch's copy."""
    kernel = transpose_kernel() if x.is_cpu and x.dtype == torch.float32 and x.stride(1) == 1 else None
    if kernel is None:
        return x.t().contiguous()
    with torch.profiler.record_function("seq2seq::transpose_kernel"):  # named in profiles (benchmarks/roofline.py)
        return kernel.transposed(x)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """nn.functional.linear(x, weight, bias) for x (N, in), weight (out, in), bias (out,) or None: in oneDNN where
    fp32_library() says so for an fp32 CPU product (bias summed inside it, as addmm does), else as torch does."""
    if x.dim() == 2 and in_onednn(x, weight) and (bias is None or bias.dim() == 1):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.nn.functional.linear(x, weight, bias)


class _Linear(torch.autograd.Function):
    """y = x W^T + b for 2-D x with its three products in oneDNN (`linear`, `mm`): forward, dx = dy W, dW = dy^T x."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = mm(grad, weight) if ctx.needs_input_grad[0] else None  # (N, in)
        grad_weight = mm(grad.t(), x) if ctx.needs_input_grad[1] else None  # (out, in)
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None  # (out,), as addmm's backward
        return grad_x, grad_weight, grad_bias


def trainable_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """nn.functional.linear(x, weight, bias) for x (..., in), with autograd: in oneDNN, forward and backward, for
    fp32 CPU tensors outside autocast where fp32_library() says so (an AMD CPU with AVX-512), else as torch does
    (MKL for fp32 on a CPU; under bf16 autocast, autocast's bf16 products)."""
    if not (in_onednn(x, weight) and not torch.is_autocast_enabled("cpu") and (bias is None or bias.dim() == 1)):
        return torch.nn.functional.linear(x, weight, bias)
    y = _Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias)  # (N, out)
    return y.view(*x.shape[:-1], weight.shape[0])


def describe() -> str | None:
    """The log's line where the fp32 products leave MKL, else None."""
    if fp32_library() != "onednn":
        return None
    return "fp32 matrix products (softmax, attention, step loops, search): oneDNN (seq2seq.gemm; MKL is slower here)"


def announce(say, device: torch.device, mixed_precision: str) -> None:
    """Tell the run's log (`say`) when an fp32 run on a CPU has its fp32 products in oneDNN."""
    if mixed_precision == "no" and device.type == "cpu" and (line := describe()):
        say(line)
