"""Shared test helpers: real data paths and independent OME-Zarr checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_path(relative: str) -> Path:
    """Path of a file in ../shared/data; skip the test when the data set is not there."""
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def validate_ngff(path: Path | str) -> object:
    """Validate an image group with ome-zarr-models (independent of our writer)."""
    from ome_zarr_models.v04 import Image as ImageV04
    from ome_zarr_models.v05 import Image as ImageV05

    group = zarr.open_group(str(path), mode="r")
    if group.metadata.zarr_format == 3:
        return ImageV05.from_zarr(group)
    return ImageV04.from_zarr(group)


def read_with_ome_zarr_py(path: Path | str) -> tuple[list[np.ndarray], dict]:
    """Read all levels and metadata with ome-zarr-py's Reader."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(path), mode="r"))()))
    return [np.asarray(level) for level in node.data], node.metadata
