"""`bigrestore.open_result`: a run output as a lazy xarray.Dataset, checked against the NGFF
coordinate transformations and OMERO labels of a real (tiny-model) run output."""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import synthetic_nuclei
from test_run import tiny_model

import bigrestore
from bigrestore.errors import BadInputError, MissingInputError
from bigrestore.io.images import open_image
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import run_settings

SCALE = (0.29, 0.26, 0.24)
ORIGIN = (1.5, 5.0, 7.0)


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    """Two channels (DAPI, GFP), 3 z-planes, 64 x 56 px, restored with 2 saved samples."""
    root = tmp_path_factory.mktemp("result")
    data = np.stack([synthetic_nuclei((3, 64, 56), seed=s) for s in (0, 1)])
    meta = ImageMeta(
        "czyx",
        (1.0, *SCALE),
        (0.0, *ORIGIN),
        (None, "micrometer", "micrometer", "micrometer"),
        ("DAPI", "GFP"),
        "cells",
    )
    source = write_image(root / "in.zarr", data, meta, chunks=(1, 1, 32, 32))
    settings = run_settings(
        samples=2, sampler="ddim", steps=2, tile=32, overlap=8, batch=4, chunk=32, save_samples=True
    )
    out = root / "out.zarr"
    restore(
        source,
        out,
        model=tiny_model(root / "model"),
        settings=settings,
        cluster=ClusterSpec(workers=1),
        pyramid_min_side=16,
    )
    return out


def _ngff(group_path, level):
    """Scale, translation, axes and units of one level, straight from the NGFF JSON."""
    attrs = dict(zarr.open_group(str(group_path), mode="r").attrs)
    multiscale = attrs.get("ome", attrs)["multiscales"][0]
    transforms = {t["type"]: t for t in multiscale["datasets"][level]["coordinateTransformations"]}
    return (
        transforms["scale"]["scale"],
        transforms.get("translation", {}).get("translation", [0.0] * len(multiscale["axes"])),
        multiscale["axes"],
    )


@pytest.mark.parametrize("level", [0, 1])
def test_coordinates_follow_the_ngff_transforms(run_output, level):
    ds = bigrestore.open_result(run_output, level=level)
    assert isinstance(ds, xr.Dataset) and ds.attrs["level"] == level
    assert {"mean", "std", "entropy", "samples"} <= set(ds.data_vars)
    scale, translation, axes = _ngff(run_output / "mean", level)
    shape = zarr.open_array(str(run_output / "mean" / str(level)), mode="r").shape
    for i, axis in enumerate(axes):
        if axis["name"] == "c":
            continue
        coord = ds.coords[axis["name"]]
        expected = translation[i] + scale[i] * np.arange(shape[i])
        np.testing.assert_allclose(coord.values, expected, rtol=0, atol=1e-12)
        assert coord.attrs["units"] == axis["unit"] == "micrometer"
    assert list(ds.coords["c"].values) == ["DAPI", "GFP"]
    assert ds["mean"].dims == ("c", "z", "y", "x") and ds["mean"].shape == shape
    if level == 1:  # the pyramid: half the pixels, twice the pixel size, origin moved half a pixel
        assert ds.sizes["y"] == 32 and ds.sizes["x"] == 28
        assert ds.coords["x"].values[0] == pytest.approx(ORIGIN[2] + SCALE[2] / 2)
        assert ds.coords["x"].attrs["scale"] == pytest.approx(2 * SCALE[2])


def test_variables_are_lazy_and_hold_the_stored_values(run_output):
    ds = bigrestore.open_result(run_output)
    for name in ("mean", "std", "entropy"):
        assert isinstance(ds[name].data, da.Array)
        np.testing.assert_array_equal(ds[name].values, open_image(run_output / name).data.compute())
    samples = ds["samples"]
    assert samples.dims == ("sample", "c", "z", "y", "x") and list(ds.coords["sample"]) == [0, 1]
    np.testing.assert_array_equal(
        samples.isel(sample=1).values,
        open_image(run_output / "samples" / "01.zarr").data.compute(),
    )
    assert (
        ds["std"].attrs["units_kind"] == "spread"
        and "entropy" in ds["entropy"].attrs["description"]
    )
    picked = ds["mean"].sel(c="GFP").sel(z=ORIGIN[0] + SCALE[0] + 0.01, method="nearest")
    np.testing.assert_array_equal(picked.values, ds["mean"].values[1, 1])


def test_attrs_hold_the_run_manifest(run_output):
    ds = bigrestore.open_result(run_output)
    manifest = dict(zarr.open_group(str(run_output), mode="r").attrs["bigrestore"])
    assert ds.attrs["status"] == "complete" and ds.attrs["settings"] == manifest["settings"]
    assert ds.attrs["outputs"] == manifest["outputs"] and ds.attrs["store"] == str(run_output)


def test_refusals(run_output, tmp_path):
    with pytest.raises(MissingInputError):
        bigrestore.open_result(tmp_path / "nope.zarr")
    with pytest.raises(BadInputError, match="run output"):
        bigrestore.open_result(run_output / "mean")  # an image, not a run output
    with pytest.raises(BadInputError, match="level"):
        bigrestore.open_result(run_output, level=9)


def test_importing_bigrestore_stays_light():
    code = (
        "import sys, bigrestore; "
        "print(sorted(m for m in ('xarray', 'zarr', 'dask', 'torch', 'bigrestore.io') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
