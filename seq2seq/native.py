"""Compiled CPU kernels, built once on first use with torch.utils.cpp_extension (a C++ compiler and ninja).

There are seven, each a small C++ file in `csrc/`:
- `softmax_loss.cpp`: the cross-entropy read straight from bf16 logits (seq2seq.softmax, bf16 autocast on a CPU);
- `softmax_fp32.cpp`: the float32 cross-entropy's element-wise passes, one row of logits at a time, with ATen's
  arithmetic (seq2seq.softmax, every fp32 CPU run);
- `dropout_masks.cpp`: dropout masks from torch's CPU generator, the same masks as torch.rand would give
  (seq2seq.dropout, every CPU run with dropout);
- `recurrence.cpp`: the step loops of seq2seq.recurrence (`variational`, `naive`) without Python between them,
  each float32 step's element-wise work in one pass with ATen's arithmetic;
- `search_cell.cpp`: a decoder layer's LSTM cell at a beam-search step with its row gathers, in one pass, with
  ATen's own sigmoid and MKL's tanh, or in bf16 search faster approximations of them (seq2seq.translator.decoder_step,
  fp32 states on a CPU); and bf16 search's attention tanh and output log_softmax (seq2seq.products);
- `sparse_norm.cpp`: the clipping norm of a row-sparse embedding gradient from its touched rows, in the order and
  rounding of torch's norm of the dense gradient (seq2seq.sparse_grad, plain SGD on a CPU);
- `transpose.cpp`: a float32 matrix transposed into a new contiguous one, in tiles on every core (seq2seq.gemm's
  oneDNN products of a transposed operand).
Two headers are shared: `aten_arithmetic.h` (ATen's element-wise functions, for kernels that must round as ATen
does) and `lanes.h` (16 floats in registers, a fast exp, bf16 conversions and the softmax's row passes). Each is
compiled for this CPU's instruction set (AVX-512, AVX2 or neither) into TORCH_EXTENSIONS_DIR (default
~/.cache/torch_extensions) and loaded from there afterwards. The kernels include ATen and torch's pybind11 glue, not
torch/extension.h, whose whole C++ front end took most of each build (~31 s a kernel on an AVX-512 EPYC, ~19 s
without it; the same machine code for the kernels: the same losses, parameters and translations bit for bit).
Where one cannot be built (no compiler, no ninja) one line says so and the eager PyTorch code runs instead, slower:
the same masks, step loops, fp32 search cells, fp32 losses and transposes bit for bit, the same bf16 loss,
gradients and bf16 search cells to rounding (lanes.h's exp and the bf16 kernel's order of sums are their own).
SEQ2SEQ_NATIVE=0 turns them off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from pathlib import Path

SOURCES = Path(__file__).parent / "csrc"
ISA_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mprefer-vector-width=512"],
             "AVX2": ["-mavx2", "-mfma"]}


def enabled() -> bool:
    return os.environ.get("SEQ2SEQ_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def build_directory(capability: str) -> Path:
    import torch.utils.cpp_extension  # imported when first needed: it pulls in setuptools

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or torch.utils.cpp_extension.get_default_build_root()
    return Path(root) / f"seq2seq-torch{torch.__version__}-{capability.lower()}"


def load(stem: str, what: str, flags: tuple[str, ...] = ()):
    """Build (once) and import csrc/<stem>.cpp for this CPU, with `flags` added to the compiler's; None where it
    is off or cannot be built."""
    if not enabled():
        return None
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    name = f"seq2seq_{stem}_{capability.lower()}"
    directory = build_directory(capability)
    if not (directory / f"{name}.so").exists() and os.environ.get("RANK", "0") == "0":
        print(f"seq2seq: compiling the {what} for this {capability} CPU, once (~20 s), into {directory}",
              file=sys.stderr)
    try:
        return build(name, SOURCES / f"{stem}.cpp", directory, flags)
    except Exception as error:  # no compiler, no ninja, a failed build: the eager path computes the same
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"seq2seq: the {what} could not be built ({reason[:200]}); using eager PyTorch instead",
              file=sys.stderr)
        return None


def build(name: str, source: Path, directory: Path, flags: tuple[str, ...] = ()):
    """Compile (once) and import one kernel source as module `name`, built in `directory` for this CPU with `flags`
    added; raises if it cannot be built. A source outside csrc/ (another version of a kernel, for
    benchmarks/search_kernel_ab.py) finds csrc's headers too."""
    import torch.utils.cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    includes = [] if source.parent == SOURCES else [str(SOURCES)]
    directory.mkdir(parents=True, exist_ok=True)
    return torch.utils.cpp_extension.load(
        name, [str(source)], extra_cflags=["-O3", "-fopenmp", *ISA_FLAGS.get(capability, []), *flags],
        extra_ldflags=["-fopenmp"], extra_include_paths=includes, build_directory=str(directory), verbose=False)


@functools.cache
def softmax_loss_kernel():
    """The compiled bf16 cross-entropy (the loss; in training the loss and its gradient in one pass), or None."""
    return load("softmax_loss", "bf16 softmax kernel", header_flags("lanes.h"))


@functools.cache
def softmax_fp32_kernel():
    """The compiled float32 softmax passes of the cross-entropy (forward, backward), or None."""
    return load("softmax_fp32", "fp32 softmax kernel", aten_arithmetic_flags())


@functools.cache
def dropout_mask_kernel():
    """The compiled dropout-mask sampler (keep_mask), or None."""
    return load("dropout_masks", "dropout-mask kernel")


@functools.cache
def recurrence_kernel():
    """The compiled step loops of MaskedLSTMRecurrence (forward_steps, backward_steps), or None."""
    return load("recurrence", "step-loop kernel", aten_arithmetic_flags())


@functools.cache
def search_cell_kernel():
    """The compiled search-step functions (cell, unique_rows; bf16 search's tanh_approx_, log_softmax_rows), or None."""
    return load("search_cell", "search-cell kernel", search_cell_flags())


def search_cell_flags() -> tuple[str, ...]:
    """The search-cell kernel's compiler flags: ATen's arithmetic (the exact cell) and lanes.h (bf16 search)."""
    return aten_arithmetic_flags() + header_flags("lanes.h")


@functools.cache
def sparse_norm_kernel():
    """The compiled norm of a row-sparse float32 gradient (sparse_rows_norm), or None."""
    return load("sparse_norm", "sparse-gradient norm kernel", aten_arithmetic_flags())


@functools.cache
def transpose_kernel():
    """The compiled tiled float32 transpose (transposed), or None."""
    return load("transpose", "transpose kernel")


def aten_arithmetic_flags() -> tuple[str, ...]:
    """Compiler flags for a kernel whose arithmetic must round as ATen's: ATen's vector classes for this CPU
    (CPU_CAPABILITY_<ISA>, as ATen's own kernels are built) and no FMA contraction (a fused multiply-add only where
    the code asks for one)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    isa = (f"-DCPU_CAPABILITY_{capability}",) if capability in ISA_FLAGS else ()
    return (*isa, "-ffp-contract=off", *header_flags("aten_arithmetic.h"))


def header_flags(header: str) -> tuple[str, ...]:
    """A define holding the digest of csrc/<header>, for a kernel that includes it: torch's build cache hashes
    sources and flags, not headers, so a changed header rebuilds its kernels this way."""
    digest = hashlib.sha1((SOURCES / header).read_bytes()).hexdigest()[:12]
    return (f"-DSEQ2SEQ_{header.replace('.', '_').upper()}={digest}",)
