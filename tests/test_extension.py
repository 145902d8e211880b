"""Finding and checking the compiled library: the torch it was built against and the oldest it runs under,
shadowing source folders."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddet_ops
from ddet_ops import _extension

LIBRARY = Path(ddet_ops._C.__file__)


def test_the_library_records_the_torch_it_was_built_against_and_its_minimum():
    built_against, minimum = _extension._built_for(LIBRARY)
    assert re.fullmatch(r"\d+\.\d+\.\d+", built_against), built_against
    assert minimum == "2.11"
    assert _extension._release(torch.__version__) >= _extension._release(minimum)


def _edited_copy(tmp_path, old: bytes, new: bytes) -> Path:
    """A copy of the library with one recorded text changed (same length, so the file stays valid)."""
    assert len(old) == len(new)
    data = LIBRARY.read_bytes()
    assert data.count(old) == 1
    (tmp_path / LIBRARY.name).write_bytes(data.replace(old, new))
    return tmp_path


def test_a_library_for_a_newer_torch_is_refused_naming_both_versions(tmp_path):
    folder = _edited_copy(tmp_path, b" for torch >= 2.11", b" for torch >= 9.99")
    with pytest.raises(
        ImportError,
        match=rf"for torch >= 9\.99, but torch {re.escape(torch.__version__)} is installed.*torch>=9\.99",
    ):
        _extension.load([str(folder)])


def test_a_library_built_against_a_later_torch_loads_under_this_one(tmp_path):
    """The stable ABI's promise: what counts is the minimum, not the torch that compiled it."""
    built_against, _ = _extension._built_for(LIBRARY)
    later = b"9" + built_against.encode()[1:]
    folder = _edited_copy(tmp_path, b"torch " + built_against.encode() + b" for", b"torch " + later + b" for")
    assert _extension._built_for(folder / LIBRARY.name)[0] == later.decode()
    _extension.load([str(folder)])


def test_a_library_without_the_stable_abi_is_refused(tmp_path):
    folder = _edited_copy(tmp_path, b" for torch >= ", b" for torch == ")
    with pytest.raises(
        ImportError,
        match=f"without the stable ABI.*rm {re.escape(str(folder / LIBRARY.name))} && pip install --force-reinstall",
    ):
        _extension.load([str(folder)])


def test_a_missing_library_is_named_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    with pytest.raises(ImportError, match="extension is missing.*pip install --force-reinstall --no-deps ."):
        _extension.load([str(tmp_path)])


def test_a_source_folder_without_the_library_uses_the_installed_one(tmp_path):
    """``pip install .`` (not -e) then ``import ddet_ops`` from the clone's root: the source folder
    comes first on sys.path and has no compiled library."""
    source = tmp_path / "clone" / "ddet_ops"
    shutil.copytree(LIBRARY.parent, source, ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    code = (
        "import torch, ddet_ops; x = torch.ones(1, 1, 4, 4); "
        "print(ddet_ops.__file__, ddet_ops.dynconv(x, torch.ones(1, 9, 4, 4))[0, 0, 1, 1].item())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=source.parent,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(LIBRARY.parents[1]), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(source / "__init__.py"), "9.0"]
