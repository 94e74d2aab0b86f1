"""One fused LSTM layer (nn.LSTM: oneDNN on a CPU), forward + backward, in fp32 and under bf16 autocast, against
the layer's GEMM-bound ceiling (seq2seq.roofline.lstm_layer) at the shapes the recipes train.

    python benchmarks/lstm_layers.py [--shapes 650,35,20 ...] [--steps 15]

Each shape is units,steps,batch (input size = units): PTB small (200, 20 steps, batch 20), medium (650, 35, 20),
large (1500, 35, 20), the translation demo's decoder (256, 19, 110), WMT's (1000, 20, 64), and neighbours of
them, since oneDNN picks its kernels, and its speed, by the shape. The two precisions alternate, a layer at a
time; the figure is the median of `--steps` passes.
"""

from __future__ import annotations

import argparse
import time

import torch

from seq2seq.devices import bf16_supported, keep_freed_memory
from seq2seq.roofline import ceiling_seconds, lstm_layer

SHAPES = ("200,20,20", "256,19,110", "650,35,16", "650,35,20", "650,35,24", "650,35,32", "640,35,20",
          "1000,20,64", "1000,35,20", "1500,35,20", "1500,35,64")


def layer_pass(lstm: torch.nn.LSTM, x: torch.Tensor, bf16: bool) -> None:
    """Forward and backward of one layer, as a training step runs it."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y, _ = lstm(x)
    y.float().sum().backward()


def alternating(run, steps: int) -> tuple[float, float]:
    """Median ms of run(False) and run(True), taken in turn."""
    for _ in range(2):
        run(False), run(True)
    times = {False: [], True: []}
    for _ in range(steps):
        for bf16 in (False, True):
            start = time.perf_counter()
            run(bf16)
            times[bf16].append((time.perf_counter() - start) * 1e3)
    return tuple(sorted(times[b])[steps // 2] for b in (False, True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="units,steps,batch")
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    if not bf16_supported(torch.device("cpu")):
        raise SystemExit("this CPU has no bf16 in hardware (AVX512-BF16 / AMX): nothing to compare")
    keep_freed_memory()  # the allocator setting the recipes train in
    print(f"torch {torch.__version__} | CPU {torch.backends.cpu.get_cpu_capability()} | "
          f"{torch.get_num_threads()} threads | one nn.LSTM layer, forward + backward, median ms")
    for shape in args.shapes:
        units, steps, batch = (int(n) for n in shape.split(","))
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(units, units)
        x = torch.randn(steps, batch, units, requires_grad=True)  # (T, B, units)
        fp32, bf16 = alternating(lambda b: layer_pass(lstm, x, b), args.steps)
        products = lstm_layer(steps, batch, units, units)
        ceiling = [ceiling_seconds(products, dtype) * 1e3 for dtype in (torch.float32, torch.bfloat16)]
        print(f"  units {units:>4}, T {steps:>2}, B {batch:>3}: fp32 {fp32:8.2f} ms ({ceiling[0] / fp32:4.0%} of its "
              f"ceiling)   bf16 {bf16:8.2f} ms ({ceiling[1] / bf16:4.0%})   bf16 / fp32 time {bf16 / fp32:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
