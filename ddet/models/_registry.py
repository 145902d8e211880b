"""Name -> (model class, default configuration) table behind :func:`ddet.models.create`."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, NamedTuple

from torch import nn


class Entry(NamedTuple):
    """A registered model: ``build(config)`` makes it; ``description`` says what it is in a line."""

    build: Callable[[Any], nn.Module]
    config: Any
    description: str


_ENTRIES: Dict[str, Entry] = {}


def register(name: str, entry: Entry) -> None:
    """Make ``create(name)`` return ``entry.build(entry.config)``; the config must be a dataclass."""
    if name in _ENTRIES:
        raise ValueError(f"model name {name!r} is registered twice")
    if not dataclasses.is_dataclass(entry.config):
        raise TypeError(f"the configuration of {name!r} must be a dataclass instance, got {entry.config!r}")
    _ENTRIES[name] = entry


def _entry(name: str) -> Entry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise ValueError(f"unknown model name {name!r}; known models: {', '.join(_ENTRIES)}") from None


def names() -> List[str]:
    """Every registered model name, in registration order (the order of the paper's tables)."""
    return list(_ENTRIES)


def describe(name: str) -> str:
    """One line saying what the model ``name`` is."""
    return _entry(name).description


def default_config(name: str) -> Any:
    """The configuration ``create(name)`` uses when given no overrides (a frozen dataclass)."""
    return _entry(name).config


def create(name: str, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name``, with configuration fields replaced by ``overrides``.

    >>> model = create("ddet", in_channels=3)
    """
    entry = _entry(name)
    known = [field.name for field in dataclasses.fields(entry.config)]
    unknown = [key for key in overrides if key not in known]
    if unknown:
        raise ValueError(
            f"model {name!r} has no configuration field(s) {', '.join(map(repr, unknown))}; "
            f"its fields are: {', '.join(known)}"
        )
    return entry.build(dataclasses.replace(entry.config, **overrides))


def parameter_count(model: nn.Module) -> int:
    """Number of trainable-parameter elements (buffers such as batch-norm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """Parameter size in the unit of the paper's Table III: float32 bytes / 10^6."""
    return parameter_count(model) * 4 / 1e6
