"""Where training runs: CPU thread counts under accelerate."""

from __future__ import annotations

import os

import torch


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
