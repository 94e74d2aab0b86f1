"""Where training runs: CPU thread counts under accelerate, the C allocator, devices and precisions."""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import torch

from .errors import UserError


def use_cpu_cores(accelerator) -> int:
    """On CPU, give each local process an equal share of the cores and return it.

    `accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise, which halves a 2-core machine's
    speed for a single-process run; an explicit SEQ2SEQ_CPU_THREADS wins over this share.
    """
    if accelerator.device.type != "cpu":
        return torch.get_num_threads()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
    threads = int(os.environ.get("SEQ2SEQ_CPU_THREADS", max(1, (os.cpu_count() or 1) // local)))
    torch.set_num_threads(threads)
    return threads


def warm_up_vector_math() -> None:
    """Compute one small exp on one thread, so that every process computes the same exps afterwards.

    torch.exp (tanh, log) of a large CPU tensor goes through MKL's vector math, which sets itself up on first use.
    When that first use was multi-threaded (the first softmax of a training run), about one process in seven got
    different values from it (PTB small's first loss 3685.2480 instead of 3685.2368, and a different run from
    there on): a seed did not fix the result. The set-up is shared: after this one exp, first in-place tanh and
    log of (400, 10000) tensors agreed too (0 of 16 processes each differed; 2 and 3 of 16 without). Called when
    seq2seq is imported.
    """
    torch.exp(torch.zeros(16))


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc <malloc.h>
MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest M_MMAP_THRESHOLD glibc accepts on 64-bit Linux
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MB for reuse instead of handing them back to the kernel.

    A training step allocates and frees the same large temporaries every step (logits, their gradients, bf16
    copies of weights). By default glibc may serve such blocks with a fresh mmap and unmap them when freed, so
    each step faults their pages in and the kernel zeroes them again (the demo translator's step in
    benchmarks/roofline.py: ~25,800 page faults and ~45 ms of system time); whether it does depends on what the
    process freed before. With a fixed mmap threshold at glibc's maximum and a high trim threshold they come from
    the heap and are reused (~950 faults a step). Numbers are unchanged: only where the memory comes from. Returns
    whether it applied (Linux with glibc; elsewhere it does nothing).
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A tensor on `device`; to CUDA through page-locked memory without waiting for the copy (it is ordered
    on the stream before the kernels that read it)."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_device(name: str, flag: str = "--device") -> torch.device:
    """auto (CUDA when available, else the CPU), cpu, cuda or cuda:N; a CUDA device this machine does not
    have is a UserError in one line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{flag} {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            raise UserError(f"{flag} {name}: CUDA is not available on this machine (torch {torch.__version__}, {build}); "
                            f"use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UserError(f"{flag} {name}: expected auto, cpu, cuda or cuda:N")
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 runs at hardware speed here: CUDA with bf16, or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def training_precision(requested: str, log=None, warn=None) -> str:
    """accelerate's mixed_precision for --mixed-precision: `auto` is bf16 where the device that will train serves
    it in hardware (CUDA with bf16; a CPU with AVX512-BF16 / AMX), else no (fp32); a bf16 request the hardware does
    not serve runs fp32. The first process says which in one line: auto's choice to `log` (default stdout, the
    run's log), a refused bf16 request to `warn` (default stderr); the recipe records the choice."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    device = torch.device("cuda" if torch.cuda.is_available() and not use_cpu else "cpu")
    where = f"{device.type} ({torch.backends.cpu.get_cpu_capability()})" if device.type == "cpu" else device.type
    chosen, why, say = requested, None, log or print
    if requested in ("auto", "bf16") and not bf16_supported(device):
        chosen, why = "no", f"bf16 is not supported in hardware on this {where}: training in fp32"
        if requested == "bf16":
            say = warn or (lambda line: print(line, file=sys.stderr))
    elif requested == "auto":
        chosen, why = "bf16", f"bf16 is supported in hardware on this {where}: training with bf16 autocast"
    if why and os.environ.get("RANK", "0") == "0":
        say(f"--mixed-precision {requested}: {why}")
    return chosen


def choose_dtype(name: str, device: torch.device, warn) -> torch.dtype:
    """The decoding dtype; `auto` is bf16 where the device serves it in hardware, else fp32; a precision the device
    does not serve falls back to fp32 with one line to `warn`."""
    if name == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and not bf16_supported(device):
        warn(f"bf16 is not supported in hardware on this {device.type} ({torch.backends.cpu.get_cpu_capability()}); "
             f"decoding in fp32")
        return torch.float32
    if dtype == torch.float16 and device.type != "cuda":
        warn("fp16 decoding needs a CUDA device; decoding in fp32")
        return torch.float32
    return dtype
