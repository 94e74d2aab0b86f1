import importlib.util
import sys
from pathlib import Path

import pytest

from seq2seq.data.word_corpus import write_toy_corpus

ROOT = Path(__file__).resolve().parents[1]


def load_recipe(name: str):
    """Import recipes/NAME.py as a module (recipes/ holds scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def word_corpus(tmp_path):
    return write_toy_corpus(tmp_path / "ptb")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Recipes run in-process here; accelerate keeps process-wide singletons between Accelerator()s."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda are skipped, and say so, on machines without a CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_check.sh on a GPU machine)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
