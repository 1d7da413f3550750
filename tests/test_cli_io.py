"""CLI: convert and info through click, exit codes and messages for bad input."""

from __future__ import annotations

import json

import numpy as np
import tifffile
from click.testing import CliRunner
from conftest import data_path, validate_ngff

from bigrestore.cli import cli
from bigrestore.io.images import open_image


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("convert", "info"):
        assert command in result.output
    convert = run("convert", "--help")
    for needed in ("CZI", "ND2", "LIF", "OME-TIFF", "--scene", "bigrestore[formats]"):
        assert needed in convert.output, needed


def test_convert_real_stack_and_info(tmp_path):
    source = data_path("clean/cells3d_nuclei.tif")
    out = tmp_path / "nuclei.zarr"
    result = run(
        "convert",
        source,
        out,
        "--axes",
        "zyx",
        "--pixel-size",
        "z=0.29",
        "--pixel-size",
        "y=0.26",
        "--pixel-size",
        "x=0.26",
        "--chunk",
        "100",
    )
    assert result.exit_code == 0, result.output
    image = open_image(out)
    np.testing.assert_array_equal(image.data.compute(), tifffile.imread(source))
    assert image.chunks == (1, 100, 100)
    assert image.meta.scale == (0.29, 0.26, 0.26)
    validate_ngff(out)
    info = run("info", out, "--json")
    assert info.exit_code == 0
    record = json.loads(info.output)
    assert (
        record["axes"] == "zyx"
        and record["shape"] == [60, 256, 256]
        and record["dtype"] == "uint16"
    )
    human = run("info", out)
    assert "z=0.29 micrometer" in human.output


def test_convert_ome_tiff_reads_axes_and_sizes(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, size=(3, 2, 40, 50), dtype=np.uint8)
    source = tmp_path / "in.ome.tif"
    tifffile.imwrite(
        source,
        data,
        metadata={
            "axes": "TCYX",
            "PhysicalSizeX": 0.1,
            "PhysicalSizeY": 0.1,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
        },
    )
    assert run("convert", source, tmp_path / "o.zarr", "--ngff-version", "0.4").exit_code == 0
    image = open_image(tmp_path / "o.zarr")
    assert image.meta.axes == "tcyx" and image.ngff_version == "0.4"
    assert image.meta.scale[-2:] == (0.1, 0.1) and image.meta.units[-1] == "micrometer"
    np.testing.assert_array_equal(image.data.compute(), data)


def test_exit_codes_and_one_line_messages(tmp_path):
    missing = run("info", tmp_path / "nope.zarr")
    assert (
        missing.exit_code == 66
        and "nope.zarr" in missing.output
        and "Traceback" not in missing.output
    )
    source = data_path("clean/dsb2018_nuclei_2d.tif")
    assert run("convert", source, tmp_path / "a.zarr").exit_code == 0
    again = run("convert", source, tmp_path / "a.zarr")
    assert again.exit_code == 73 and "--overwrite" in again.output
    bad_axes = run("convert", data_path("clean/cells3d_nuclei.tif"), tmp_path / "b.zarr")
    assert bad_axes.exit_code == 65 and "--axes" in bad_axes.output
    assert not (tmp_path / "b.zarr").exists()
    wrong = run("convert", source, tmp_path / "c.zarr", "--axes", "zyx")
    assert wrong.exit_code == 65 and "expected 2 letters" in wrong.output
    usage = run("convert", source, tmp_path / "d.zarr", "--pixel-size", "q=1")
    assert usage.exit_code == 2
