"""Plain region reads and writes of one zarr array, for the block tasks and patch readers.

The callers (``bigrestore.run.block``, ``bigrestore.train.patches``) work with numpy arrays and
array paths only; this module is where those paths become zarr arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from bigrestore.errors import IOFailure


def open_array(path: str, writable: bool = False) -> Any:
    """The zarr array at ``path`` (read-only unless ``writable``)."""
    return zarr.open_array(str(path), mode="r+" if writable else "r")


def read_region(path: str, selection: tuple[Any, ...]) -> np.ndarray:
    """``array[selection]`` of the array at ``path`` as a numpy array.

    A chunk that cannot be decoded (a damaged file, a truncated copy) is an IOFailure naming the
    array and the region, not a codec traceback.
    """
    array = open_array(path)
    try:
        return np.asarray(array[selection])
    except (RuntimeError, ValueError, OSError) as exc:
        raise IOFailure(
            f"{path}: cannot read region {_describe(selection)}: a chunk there is damaged ({exc})"
        ) from exc


def _describe(selection: tuple[Any, ...]) -> str:
    """``[0:128, 64:192]`` for a tuple of slices (what a user can look up)."""
    parts = [f"{s.start or 0}:{s.stop}" if isinstance(s, slice) else str(s) for s in selection]
    return "[" + ", ".join(parts) + "]"


def write_region(path: str, selection: tuple[Any, ...], values: np.ndarray) -> None:
    """``array[selection] = values`` for the array at ``path`` (whole chunks, one writer each)."""
    open_array(path, writable=True)[selection] = values


#: The run store's done-record: one entry per block, set once the block's chunks are written.
DONE_ARRAY = "done"


def mark_block_done(store: str, index: tuple[int, ...]) -> None:
    """Set a block's done-record (called by the block's task after its chunks are written; it
    lives here, not with the run store, so a worker does not import the NGFF writers)."""
    zarr.open_array(f"{store}/{DONE_ARRAY}", mode="r+")[index] = 1
