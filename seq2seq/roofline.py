"""How close a workload runs to what the machine's matrix products allow: its GEMM-bound ceiling.

A training step of these models is, in arithmetic, a list of matrix products: per LSTM layer the input projection
of all steps at once and the recurrent projection once per step, per linear layer (softmax, attention combine)
one product forward and two backward (the input's and the weight's gradients). Each product's throughput is
measured on the machine at hand, at its exact shape and precision (small recurrent products run far below a
2048^2 matmul), with the faster of the two GEMM libraries torch ships for the CPU (MKL behind torch.matmul,
oneDNN behind its linear layers: on an AMD EPYC with AVX-512, oneDNN's fp32 products run about twice MKL's);
the ceiling is the time of those products alone. Efficiency = achieved / ceiling is the figure that carries from
machine to machine; words/s does not.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass

import torch

from .gemm import fp32_library, onednn_available


@dataclass(frozen=True)
class Product:
    """(m, k) @ (k, n), done `times` per unit of work (a training step, a decoding step); `lstm` marks the
    products an LSTM layer's own kernel runs (oneDNN's, or seq2seq.recurrence), as opposed to linear layers."""

    m: int
    k: int
    n: int
    times: float = 1.0
    lstm: bool = False

    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n * self.times


def linear(rows: int, inputs: int, outputs: int, times: float = 1.0, backward: bool = True) -> list[Product]:
    """y = x W^T for `rows` rows: forward, then (training) dx = dy W and dW = dy^T x."""
    forward = [Product(rows, inputs, outputs, times)]
    return forward + ([Product(rows, outputs, inputs, times), Product(outputs, rows, inputs, times)] if backward else [])


def lstm_layer(steps: int, batch: int, inputs: int, units: int, directions: int = 1, backward: bool = True
               ) -> list[Product]:
    """One LSTM layer, for each direction: W_ih over all steps at once; W_hh's forward and input-gradient products
    once per step (each needs the step before); W_hh's gradient, a sum over the steps, as one product over all of
    them (dW_hh = dG^T H_prev, as oneDNN's backward computes it)."""
    rows = steps * batch
    recurrent = linear(batch, units, 4 * units, steps * directions, backward)
    if backward:
        recurrent[-1] = Product(4 * units, rows, units, directions)
    products = linear(rows, inputs, 4 * units, directions, backward) + recurrent
    return [dataclasses.replace(p, lstm=True) for p in products]


def language_model_step(batch: int, unroll: int, hidden: int, layers: int, vocab: int) -> list[Product]:
    """A truncated-BPTT step of the PTB model (embedding size = hidden size): the LSTMs and the softmax."""
    products = [p for _ in range(layers) for p in lstm_layer(unroll, batch, hidden, hidden)]
    return products + linear(unroll * batch, hidden, vocab)


def acoustic_model_step(frames_per_utterance: int, batch: int, inputs: int, hidden: int, layers: int,
                        classes: int, bidirectional: bool = True) -> list[Product]:
    """A training step of the acoustic model on `batch` utterances of equal length."""
    directions = 2 if bidirectional else 1
    units = hidden // directions
    sizes = [inputs] + [hidden] * (layers - 1)
    products = [p for size in sizes for p in lstm_layer(frames_per_utterance, batch, size, units, directions)]
    return products + linear(frames_per_utterance * batch, hidden, classes)


def translator_step(batch: int, src_len: int, tgt_len: int, embedding: int, hidden: int, layers: int, vocab: int,
                    attention: bool = True, bidirectional_encoder: bool = True) -> list[Product]:
    """A training step of the translator on `batch` pairs of src_len / tgt_len pieces (padding included)."""
    directions = 2 if bidirectional_encoder else 1
    sizes = [embedding] + [hidden] * (layers - 1)
    products = [p for size in sizes for p in lstm_layer(src_len, batch, size, hidden // directions, directions)]
    products += [p for size in sizes for p in lstm_layer(tgt_len, batch, size, hidden)]
    if attention:
        products += linear(src_len * batch, hidden, hidden)  # keys W_a s
        products += [Product(tgt_len, hidden, src_len, 3 * batch), Product(tgt_len, src_len, hidden, 3 * batch)]
        products += linear(tgt_len * batch, 2 * hidden, hidden)  # h~ = tanh(W_c [c; h])
    return products + linear(tgt_len * batch, hidden, vocab)


def rate(m: int, k: int, n: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """Measured FLOP/s of (m, k) @ (k, n) in dtype on device: best of repeated timed batches with the faster GEMM
    library (products_of), measured once per shape in a process (measured_rate.cache_clear() to measure again)."""
    return measured_rate(m, k, n, dtype, str(device))


@functools.cache
def measured_rate(m: int, k: int, n: int, dtype: torch.dtype, device: str, seconds: float = 0.15) -> float:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    libraries = products_of(a, b)  # the time is shared, so a rate costs what it did with one library
    return max(library_rate(product, m * k * n, device, seconds / len(libraries)) for product in libraries)


def library_rate(product, mkn: int, device: str, seconds: float) -> float:
    """Best FLOP/s of repeated timed batches of `product()` ((m, k) @ (k, n), m * k * n = mkn)."""
    for _ in range(3):
        product()
    best, deadline = 0.0, time.perf_counter() + seconds
    repeats = max(1, int(2e7 / max(1, 2 * mkn)))  # ~20 MFLOP a timing, so tiny products are timed fairly
    while time.perf_counter() < deadline:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            product()
        synchronize(device)
        best = max(best, 2.0 * mkn * repeats / (time.perf_counter() - start))
    return best


def products_of(a: torch.Tensor, b: torch.Tensor) -> list:
    """a @ b by each GEMM library torch offers on a's device: torch.matmul (MKL for fp32 on a CPU, oneDNN for
    bf16) and, on a CPU, oneDNN's linear layer (b transposed once, outside the timing)."""
    products = [lambda: torch.matmul(a, b)]
    if a.device.type == "cpu" and onednn_available():
        onednn, weight = torch.ops.mkldnn._linear_pointwise, b.t().contiguous()  # weight (n, k): y = a weight^T
        try:
            onednn(a, weight, None, "none", [], "")
            products.append(lambda: onednn(a, weight, None, "none", [], ""))
        except RuntimeError:  # this build or CPU has no oneDNN path for the dtype
            pass
    return products


def cold_seconds(product: Product, dtype: torch.dtype = torch.float32, repeats: int = 9) -> float:
    """The time of `product` on a CPU when its operands come from memory, as a large product's do inside a
    training step where other work runs between the products: the median of `repeats` single products, each
    after streaming 256 MB through the caches (`rate` measures them cached). A product done many times a step
    (a recurrent step, attention per sentence) reuses what the previous one brought in: it counts at its
    cached rate."""
    if product.times > 1:
        return product.flops() / rate(product.m, product.k, product.n, dtype)
    a, b = torch.randn(product.m, product.k).to(dtype), torch.randn(product.k, product.n).to(dtype)
    flush, medians = torch.empty(64 * 2**20), []
    for multiply in products_of(a, b):  # each library's, the faster counts
        times = []
        multiply()
        for _ in range(repeats):
            flush.fill_(1.0)
            start = time.perf_counter()
            multiply()
            times.append(time.perf_counter() - start)
        medians.append(sorted(times)[len(times) // 2])
    return min(medians) * product.times


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def ceiling_seconds(products: list[Product], dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """The time of the products alone, each at its own measured rate: no step of the workload can be faster.
    With a lower precision allowed (bf16, fp16), each product counts at the faster of it and fp32: small products
    (attention over one sentence, a recurrent step of a small batch) can run faster in fp32, and a workload may
    run any product in either (bf16 search on a CPU does: seq2seq.products)."""
    dtypes = {torch.float32, dtype}
    return sum(p.flops() / max(rate(p.m, p.k, p.n, d, device) for d in dtypes) for p in products)


def speed_record(units_per_second: float, per_step_units: float, products: list[Product], precision: str,
                 device: str = "cpu") -> dict:
    """What results.json records: achieved and GEMM-bound units/s, their ratio, precision, the CPU's capability."""
    precision = precision if precision in ("bf16", "fp16") else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    ceiling = per_step_units / ceiling_seconds(products, dtype, device)
    record = {"units_per_sec": units_per_second, "ceiling_units_per_sec": ceiling,
              "efficiency": units_per_second / ceiling, "precision": precision,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": device}
    if torch.device(device).type == "cpu":
        record["fp32_gemm"] = fp32_library()  # MKL or oneDNN for the fp32 products (seq2seq.gemm)
    return record
