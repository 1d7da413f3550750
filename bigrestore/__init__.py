"""bigrestore: restore large fluorescence-microscopy OME-Zarr data with conditional diffusion models."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public functions re-exported lazily (module, name): ``import bigrestore`` stays light and
#: imports nothing else until one of them is used.
_LAZY = {"open_result": ("bigrestore.io.results", "open_result")}


def __getattr__(name: str) -> Any:
    # The package root is the public facade, not a layer-0 module that depends on io/: the
    # target is imported by name, on first use only.
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'bigrestore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
