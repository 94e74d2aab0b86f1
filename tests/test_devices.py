import os
from types import SimpleNamespace

import torch

from seq2seq.devices import use_cpu_cores


def test_each_local_process_gets_its_share_of_the_cores(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("SEQ2SEQ_CPU_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        cpu = SimpleNamespace(device=torch.device("cpu"), num_processes=2)
        expected = max(1, (os.cpu_count() or 1) // 2)
        assert use_cpu_cores(cpu) == expected == torch.get_num_threads()
        monkeypatch.setenv("SEQ2SEQ_CPU_THREADS", "1")
        assert use_cpu_cores(cpu) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
