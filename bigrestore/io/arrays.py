"""Plain region reads and writes of one zarr array, for the block tasks and patch readers.

The callers (``bigrestore.run.block``, ``bigrestore.train.patches``) work with numpy arrays and
array paths only; this module is where those paths become zarr arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr


def open_array(path: str, writable: bool = False) -> Any:
    """The zarr array at ``path`` (read-only unless ``writable``)."""
    return zarr.open_array(str(path), mode="r+" if writable else "r")


def read_region(path: str, selection: tuple[Any, ...]) -> np.ndarray:
    """``array[selection]`` of the array at ``path`` as a numpy array."""
    return np.asarray(open_array(path)[selection])


def write_region(path: str, selection: tuple[Any, ...], values: np.ndarray) -> None:
    """``array[selection] = values`` for the array at ``path`` (whole chunks, one writer each)."""
    open_array(path, writable=True)[selection] = values
