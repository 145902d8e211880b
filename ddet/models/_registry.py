"""Name -> (model class, default configuration) table behind :func:`ddet.models.create`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from torch import nn


class Entry(NamedTuple):
    """A registered model: ``build(config)`` makes it; ``description`` says what it is in a line;
    ``pretrained`` maps an SR scale to the file of ``ddet/weights/`` bundled for it."""

    build: Callable[[Any], nn.Module]
    config: Any
    description: str
    pretrained: Mapping[int, str] = MappingProxyType({})


_ENTRIES: dict[str, Entry] = {}


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


def names() -> list[str]:
    """Every registered model name, in registration order (the order of the paper's tables)."""
    return list(_ENTRIES)


def describe(name: str) -> str:
    """One line saying what the model ``name`` is."""
    return _entry(name).description


def default_config(name: str) -> Any:
    """The configuration ``create(name)`` uses when given no overrides (a frozen dataclass)."""
    return _entry(name).config


def pretrained_scales(name: str) -> list[int]:
    """The SR scales for which weights of the model ``name`` are bundled (empty when none are)."""
    return sorted(_entry(name).pretrained)


def pretrained_file(name: str, scale: int) -> str:
    """The file name, inside ``ddet/weights/``, of the weights bundled for ``name`` at ``scale``."""
    entry = _entry(name)
    if scale not in entry.pretrained:
        at_scale = f" at ×{scale}" if entry.pretrained else ""
        raise ValueError(
            f"no bundled weights for model {name!r}{at_scale} (bundled: {_bundled()}); pass --weights FILE"
        )
    return entry.pretrained[scale]


def _bundled() -> str:
    """Every model with bundled weights and their scales, e.g. ``ddet ×2/×3/×4``."""
    found = [
        f"{name} {'/'.join(f'×{scale}' for scale in sorted(entry.pretrained))}"
        for name, entry in _ENTRIES.items()
        if entry.pretrained
    ]
    return ", ".join(found) or "none"


def create(name: str, *, pretrained: bool = False, scale: int | None = None, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name``, with configuration fields replaced by ``overrides``;
    with ``pretrained=True``, load the weights bundled for the SR ``scale`` into it.

    >>> model = create("ddet", in_channels=3)
    >>> model = create("ddet", pretrained=True, scale=2)
    """
    entry = _entry(name)
    known = [field.name for field in dataclasses.fields(entry.config)]
    unknown = [key for key in overrides if key not in known]
    if unknown:
        raise ValueError(
            f"model {name!r} has no configuration field(s) {', '.join(map(repr, unknown))}; "
            f"its fields are: {', '.join(known)}"
        )
    if not pretrained:
        if scale is not None:
            raise ValueError(f"scale={scale} selects bundled weights: pass pretrained=True with it")
        return entry.build(dataclasses.replace(entry.config, **overrides))
    if scale is None:
        raise ValueError(f"pretrained=True needs scale=, one of {pretrained_scales(name) or 'none'} for {name!r}")
    # Imported here: ddet.weights builds models from its files' metadata, so it imports this package.
    from ddet.weights import bundled_path, load_weights_into

    path = bundled_path(name, scale)
    model = entry.build(dataclasses.replace(entry.config, **overrides))
    load_weights_into(model, path)
    return model


def parameter_count(model: nn.Module) -> int:
    """Number of trainable-parameter elements (buffers such as batch-norm statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """Parameter size in the unit of the paper's Table III: float32 bytes / 10^6."""
    return parameter_count(model) * 4 / 1e6
