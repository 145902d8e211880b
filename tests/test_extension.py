"""Finding and checking the compiled library: the torch it was built against, shadowing source folders."""

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


def test_the_library_records_the_torch_it_was_built_against():
    assert _extension._built_against(LIBRARY) == torch.__version__


def test_a_library_built_for_another_torch_is_refused_naming_both_versions(tmp_path):
    data = LIBRARY.read_bytes().replace(
        b"ddet_ops built against torch " + torch.__version__.encode(), b"ddet_ops built against torch 0.0.0-other"
    )
    (tmp_path / LIBRARY.name).write_bytes(data)
    with pytest.raises(
        ImportError,
        match=f"compiled against torch 0.0.0-other, but torch {re.escape(torch.__version__)}.*--no-build-isolation",
    ):
        _extension.load([str(tmp_path)])


def test_a_missing_library_is_named_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    with pytest.raises(ImportError, match="extension is missing.*pip install --no-build-isolation"):
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
