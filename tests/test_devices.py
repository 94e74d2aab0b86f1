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
