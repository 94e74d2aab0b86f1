"""Compiled CPU kernels, built once on first use with torch.utils.cpp_extension (a C++ compiler and ninja).

There is one: the cross-entropy read straight from bf16 logits (`csrc/softmax_loss.cpp`, used by
seq2seq.softmax under bf16 autocast on a CPU). It is compiled for this CPU's instruction set (AVX-512, AVX2 or
neither) into TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions) and loaded from there afterwards. Where it
cannot be built (no compiler, no ninja) one line says so and the eager softmax runs instead: slower, the same
math. SEQ2SEQ_NATIVE=0 turns the kernel off.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "softmax_loss.cpp"
ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mprefer-vector-width=512"],
             "AVX2": ["-mavx2", "-mfma"]}


def enabled() -> bool:
    return os.environ.get("SEQ2SEQ_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def build_directory(capability: str) -> Path:
    import torch.utils.cpp_extension  # imported here: it pulls in setuptools

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or torch.utils.cpp_extension.get_default_build_root()
    return Path(root) / f"seq2seq-torch{torch.__version__}-{capability.lower()}"


@functools.cache
def softmax_loss_kernel():
    """The compiled bf16 cross-entropy module (forward, backward), or None where it is off or cannot be built."""
    if not enabled():
        return None
    import torch.utils.cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    name = f"seq2seq_softmax_loss_{capability.lower()}"
    directory = build_directory(capability)
    if not (directory / f"{name}.so").exists() and os.environ.get("RANK", "0") == "0":
        print(f"seq2seq: compiling the bf16 softmax kernel for this {capability} CPU, once (~20 s), into {directory}",
              file=sys.stderr)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return torch.utils.cpp_extension.load(
            name, [str(SOURCE)], extra_cflags=["-O3", "-fopenmp", *ISA_FLAGS.get(capability, [])],
            extra_ldflags=["-fopenmp"], build_directory=str(directory), verbose=False)
    except Exception as error:  # no compiler, no ninja, a failed build: the eager path does the same math
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"seq2seq: the bf16 softmax kernel could not be built ({reason[:200]}); using the eager softmax",
              file=sys.stderr)
        return None
