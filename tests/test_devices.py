import os
import platform
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from seq2seq.devices import choose_dtype, training_precision, use_cpu_cores


@pytest.mark.parametrize("cores, local, expected", [(8, "2", 4), (8, "3", 2), (2, "1", 2), (1, "2", 1), (16, None, 8)])
def test_each_local_process_gets_its_share_of_the_cores(monkeypatch, cores, local, expected):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr("os.cpu_count", lambda: cores)
        monkeypatch.delenv("SEQ2SEQ_CPU_THREADS", raising=False)
        if local is None:  # not launched by accelerate: the process count decides
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        cpu = SimpleNamespace(device=torch.device("cpu"), num_processes=2)
        assert use_cpu_cores(cpu) == expected == torch.get_num_threads()
        monkeypatch.setenv("SEQ2SEQ_CPU_THREADS", "1")  # an explicit setting wins
        assert use_cpu_cores(cpu) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("requested, supported, chosen, line", [
    ("auto", True, "bf16", "--mixed-precision auto: bf16 is supported in hardware on this cpu"),
    ("auto", False, "no", "--mixed-precision auto: bf16 is not supported in hardware on this cpu"),
    ("bf16", False, "no", "--mixed-precision bf16: bf16 is not supported in hardware on this cpu"),
    ("bf16", True, "bf16", None),
    ("no", True, "no", None),
])
def test_mixed_precision_follows_what_the_hardware_serves(monkeypatch, requested, supported, chosen, line):
    monkeypatch.setattr("seq2seq.devices.bf16_supported", lambda device: supported)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    log, warnings = [], []
    assert training_precision(requested, log.append, warnings.append) == chosen
    if line is None:
        assert log == warnings == []
        return
    said, silent = (warnings, log) if requested == "bf16" else (log, warnings)  # refused request: a warning
    assert len(said) == 1 and said[0].startswith(line) and silent == []
    assert "training in fp32" in said[0] or "bf16 autocast" in said[0]


@pytest.mark.parametrize("supported", [True, False])
def test_auto_decoding_dtype_is_bf16_only_where_served(monkeypatch, supported):
    monkeypatch.setattr("seq2seq.devices.bf16_supported", lambda device: supported)
    warned = []
    chosen = choose_dtype("auto", torch.device("cpu"), warned.append)
    assert chosen == (torch.bfloat16 if supported else torch.float32) and warned == []


KEPT_MEMORY_PROBE = """
import ctypes, resource, torch
from seq2seq.devices import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2

def step():  # eight 12 MB temporaries, touched, then all freed, as a training step does
    blocks = [torch.empty(3_000_000).fill_(1.0) for _ in range(8)]
    del blocks

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

applied = keep_freed_memory()
before = mallinfo2()
block = torch.empty(7_500_000).fill_(1.0)  # 30 MB
mmapped = mallinfo2().hblkhd - before.hblkhd
del block
kept = mallinfo2().fordblks - before.fordblks
print(applied, mmapped, kept, *[faults() for _ in range(48)])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
                    or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33), reason="glibc >= 2.33 only")
def test_freed_memory_is_kept_and_reused_without_page_faults():
    """After keep_freed_memory a fresh process takes a 30 MB block from the heap, not from a new mmap, and keeps it
    in the heap when freed (glibc's defaults here: mmapped, 30,003,200 bytes, and unmapped when freed); a step that
    allocates and frees eight 12 MB temporaries faults their pages in on its first step and then reuses them. While
    aligned allocations settle into the heap a few later steps fault one or two blocks in again (2,930 pages each),
    at a step that varies from process to process (seen at steps 1-18 of 48, in 1 or 4 steps of a run); glibc's
    defaults here re-fault every step in about half of fresh processes (47 of 47 steps, ~30x the first step's
    faults in all)."""
    out = subprocess.run([sys.executable, "-c", KEPT_MEMORY_PROBE], capture_output=True, text=True,
                         check=True).stdout
    applied, mmapped, kept, *counts = out.split()
    first, *later = [int(count) for count in counts]
    assert applied == "True"
    assert int(mmapped) == 0
    assert int(kept) >= 30_000_000
    assert first > 5000  # the first step takes new pages (96 MB, 30 of them kept from the block): counted
    assert len(later) == 47 and sum(count >= 50 for count in later) <= 6
    assert sum(later) < 3 * first


FIRST_SOFTMAX = """
import hashlib, torch
import seq2seq  # noqa: F401  (warms MKL's vector math up)
torch.manual_seed(0)
h, w = torch.rand(400, 200) * 2 - 1, torch.rand(10000, 200) * 0.2 - 0.1
logits = torch.mm(h, w.t())  # (N, V), the shapes of PTB small's softmax
shifted = logits.sub_(logits.amax(1, keepdim=True))
expected = torch.exp(shifted)
print(torch.equal(shifted.exp_(), expected), hashlib.sha1(expected.numpy().tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_every_process_computes_the_same_first_softmax():
    """Without the warm-up about one fresh process in seven computed a training run's first (multi-threaded) exp
    differently from the rest; eight processes in a row agree with each other and with the out-of-place exp."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    runs = [subprocess.run([sys.executable, "-c", FIRST_SOFTMAX], capture_output=True, text=True, check=True,
                           env=env).stdout.split() for _ in range(8)]
    assert all(same == "True" for same, _ in runs)
    assert len({digest for _, digest in runs}) == 1
