"""Shared test helpers: real data paths and independent OME-Zarr checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_path(relative: str) -> Path:
    """Path of a file in ../shared/data; skip the test when the data set is not there.

    The one way tests reach real data: a fresh clone without ../shared/data skips these tests
    (what the real data adds is said in the README) and runs everything else."""
    path = DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def synthetic_nuclei(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """uint16 stand-in for the cells3d nuclei stack: bright Gaussian blobs on a dim background
    (the invariant tests need structure, not biology)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape[-2:]), indexing="ij")
    planes = []
    for _ in range(int(np.prod(shape[:-2], dtype=int)) or 1):
        plane = np.full(shape[-2:], 2000.0, dtype=np.float32)
        for _ in range(max(4, shape[-1] * shape[-2] // 2000)):
            cy, cx = rng.uniform(0, shape[-2]), rng.uniform(0, shape[-1])
            radius = rng.uniform(4, 12)
            plane += rng.uniform(8000, 30000) * np.exp(
                -((grids[0] - cy) ** 2 + (grids[1] - cx) ** 2) / (2 * radius**2)
            )
        planes.append(plane)
    return np.clip(np.stack(planes).reshape(shape), 0, 65535).astype(np.uint16)


def nuclei_stack() -> np.ndarray:
    """The cells3d nuclei stack (60, 256, 256) uint16 from ../shared/data, or a synthetic stand-in
    of the same shape when the real data is not there, so invariant tests always run."""
    path = DATA / "clean" / "cells3d_nuclei.tif"
    if path.exists():
        import tifffile

        return tifffile.imread(path)
    return synthetic_nuclei((60, 256, 256))


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
