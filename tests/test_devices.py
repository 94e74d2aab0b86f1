from types import SimpleNamespace

import pytest
import torch

from seq2seq.devices import use_cpu_cores


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
