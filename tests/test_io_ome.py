"""OME-Zarr reading and writing: round trips on real arrays, other writers' stores, validation."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from conftest import data_path, read_with_ome_zarr_py, validate_ngff

from bigrestore.errors import BadInputError, CannotCreateOutputError, MissingInputError
from bigrestore.io.images import open_image
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import pyramid_shapes, write_image


def _real_arrays() -> dict[str, tuple[np.ndarray, str]]:
    w2s = tifffile.imread(data_path("w2s/val_high.tif"))  # (field, c, y, x) uint8
    cells = tifffile.imread(data_path("clean/cells3d_nuclei.tif"))  # zyx uint16
    return {
        "2d": (tifffile.imread(data_path("clean/dsb2018_nuclei_2d.tif")), "yx"),
        "3d-zyx": (cells[:20], "zyx"),
        "timelapse-tyx": (tifffile.imread(data_path("clean/ctc_timelapse_2d.tif"))[:6], "tyx"),
        "tcyx": (w2s[:3], "tcyx"),
    }


@pytest.mark.parametrize("ngff_version", ["0.4", "0.5"])
@pytest.mark.parametrize("case", ["2d", "3d-zyx", "timelapse-tyx", "tcyx", "5d-synthetic"])
def test_round_trip(tmp_path, case, ngff_version):
    if case == "5d-synthetic":
        rng = np.random.default_rng(0)
        array, axes = rng.normal(size=(2, 2, 3, 300, 270)).astype(np.float32), "tczyx"
    else:
        array, axes = _real_arrays()[case]
    n = len(axes)
    scale = tuple(0.5 + 0.1 * i for i in range(n))
    units = tuple({"t": "second", "c": None}.get(a, "micrometer") for a in axes)
    channels = tuple(f"ch{i}" for i in range(array.shape[axes.index("c")])) if "c" in axes else None
    meta = ImageMeta(axes, scale, tuple(float(i) for i in range(n)), units, channels, "sample")
    out = tmp_path / "out.zarr"
    write_image(
        out, da.from_array(array, chunks=array.shape), meta, ngff_version=ngff_version, chunks=None
    )

    image = open_image(out)
    np.testing.assert_array_equal(image.data.compute(), array)
    assert image.meta.axes == axes
    assert image.meta.scale == pytest.approx(scale)
    assert image.meta.units == units
    assert image.meta.channel_names == (channels or ("channel 0",))
    assert image.ngff_version == ngff_version

    levels, metadata = read_with_ome_zarr_py(out)
    np.testing.assert_array_equal(levels[0], array)
    assert [a["name"] for a in metadata["axes"]] == list(axes)
    assert metadata["coordinateTransformations"][0][0]["scale"] == pytest.approx(scale)
    assert [lv.shape for lv in levels] == pyramid_shapes(array.shape, axes)
    validate_ngff(out)


def test_pyramid_levels_halve_until_small(tmp_path):
    array = np.arange(1100 * 600, dtype=np.uint16).reshape(1100, 600)
    meta = ImageMeta("yx", (0.2, 0.2), (0.0, 0.0), ("micrometer", "micrometer"))
    write_image(tmp_path / "p.zarr", array, meta)
    image = open_image(tmp_path / "p.zarr", level=2)
    assert image.level_shapes == ((1100, 600), (550, 300), (275, 150))
    level1 = open_image(tmp_path / "p.zarr", level=1).data.compute()
    expected = array.reshape(550, 2, 300, 2).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(level1, np.round(expected), atol=1)
    _, metadata = read_with_ome_zarr_py(tmp_path / "p.zarr")
    assert metadata["coordinateTransformations"][2][0]["scale"] == pytest.approx([0.8, 0.8])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_opens_ome_zarr_py_written_store(tmp_path, version):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image as ozp_write_image

    array = np.random.default_rng(1).integers(0, 4000, size=(2, 40, 64, 48), dtype=np.uint16)
    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(str(tmp_path / "ozp.zarr"), mode="w", zarr_format=fmt.zarr_format)
    ozp_write_image(
        array,
        group,
        axes="czyx",
        fmt=fmt,
        scale={"z": 2.0, "y": 0.3, "x": 0.3},
        scale_factors=(2,),
        storage_options={"chunks": (1, 7, 30, 20)},
    )
    image = open_image(tmp_path / "ozp.zarr")
    assert image.meta.axes == "czyx"
    assert image.meta.scale == pytest.approx((1.0, 2.0, 0.3, 0.3))
    assert image.chunks == (1, 7, 30, 20)  # a chunking unlike ours
    np.testing.assert_array_equal(image.data.compute(), array)
    assert len(image.level_shapes) == 2


def test_opens_bioformats2raw_layout(tmp_path):
    root = tmp_path / "bf2raw.zarr"
    group = zarr.open_group(str(root), mode="w", zarr_format=2)
    group.attrs["bioformats2raw.layout"] = 3
    arrays = []
    for series in range(2):
        array = np.full((1, 1, 3, 32, 40), series + 1, dtype=np.uint8)
        meta = ImageMeta("tczyx", (1.0, 1.0, 1.0, 0.1, 0.1), (0.0,) * 5, (None,) * 5)
        write_image(root / str(series), array, meta, ngff_version="0.4")
        arrays.append(array)
    (root / "OME").mkdir()
    (root / "OME" / ".zattrs").write_text(json.dumps({"series": ["0", "1"]}))
    assert open_image(root).data.compute().max() == 1
    assert open_image(root, series=1).data.compute().max() == 2
    with pytest.raises(BadInputError, match="series"):
        open_image(root, series=5)


def test_errors_are_typed_and_named(tmp_path):
    with pytest.raises(MissingInputError, match="missing.zarr"):
        open_image(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(BadInputError, match="multiscales"):
        open_image(tmp_path / "plain.zarr")
    meta = ImageMeta("yx", (1.0, 1.0), (0.0, 0.0), (None, None))
    write_image(tmp_path / "a.zarr", np.zeros((8, 8), np.uint8), meta)
    with pytest.raises(CannotCreateOutputError, match="exists"):
        write_image(tmp_path / "a.zarr", np.ones((8, 8), np.uint8), meta)
    assert open_image(tmp_path / "a.zarr").data.compute().max() == 0  # untouched
    with pytest.raises(BadInputError, match="axes"):
        write_image(
            tmp_path / "b.zarr",
            np.zeros((4, 8, 8), np.uint8),
            ImageMeta("xyz", (1.0,) * 3, (0.0,) * 3, (None,) * 3),
        )
