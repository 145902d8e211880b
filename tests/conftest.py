"""Fixtures shared by the test files."""

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """One intra-op thread for the test. Tiny tensors gain nothing from a second thread, whose
    spinning costs seconds per test on a shared machine; some tests need one thread's order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def load_tool() -> Callable[[str], ModuleType]:
    """Imports a script of tools/ (a folder of scripts, not a package) by its name."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, REPOSITORY / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
