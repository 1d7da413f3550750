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


def test_convert_refuses_cut_short_files_and_misread_axes_before_writing(tmp_path):
    """Each refusal exits 65 (or 2 for the options) with the reason, and writes nothing."""
    stack = np.arange(7 * 40 * 50, dtype=np.uint16).reshape(7, 40, 50)
    whole = tmp_path / "stack.tif"
    tifffile.imwrite(whole, stack, imagej=True, metadata={"axes": "ZYX"})
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    header = tmp_path / "header.tif"
    header.write_bytes(whole.read_bytes()[:8])
    hyper = tmp_path / "hyper.tif"  # an ImageJ hyperstack, stored T, Z, C, Y, X
    tifffile.imwrite(hyper, np.zeros((3, 4, 2, 16, 16), np.uint16), imagej=True,
                     metadata={"axes": "TZCYX"})  # fmt: skip
    cases = {
        "cut": (run("convert", cut, tmp_path / "cut.zarr"), 65, "cut short"),
        "header": (run("convert", header, tmp_path / "header.zarr"), 65, "no image series"),
        "reordered": (
            run("convert", hyper, tmp_path / "reordered.zarr", "--axes", "tczyx"),
            65,
            "the file's own order, tzcyx",
        ),
        "letters": (run("convert", whole, tmp_path / "letters.zarr", "--axes", "qyx"), 65, "qyx"),
        "negative": (
            run("convert", whole, tmp_path / "negative.zarr", "--pixel-size", "x=-1"),
            2,
            "positive",
        ),
        "absent axis": (
            run("convert", whole, tmp_path / "absent.zarr", "--pixel-size", "t=2"),
            2,
            "axes of the image (zyx)",
        ),
    }
    for name, (result, code, words) in cases.items():
        assert result.exit_code == code and words in result.output, (name, result.output)
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cut.tif",
        "header.tif",
        "hyper.tif",
        "stack.tif",
    ]
    # a contiguous stack (one IFD, as ImageJ writes stacks over 4 GB) is complete, not cut
    contiguous = tmp_path / "contiguous.tif"
    tifffile.imwrite(contiguous, stack, imagej=True, metadata={"axes": "ZYX"}, truncate=True)
    assert run("convert", contiguous, tmp_path / "contiguous.zarr").exit_code == 0
    np.testing.assert_array_equal(open_image(tmp_path / "contiguous.zarr").data.compute(), stack)
    # relabelling (other names) is what --axes is for: a time-lapse saved as a z-stack
    relabelled = run("convert", whole, tmp_path / "t.zarr", "--axes", "tyx", "--pixel-size", "t=2")
    assert relabelled.exit_code == 0, relabelled.output
    meta = open_image(tmp_path / "t.zarr").meta
    assert meta.axes == "tyx" and meta.scale[0] == 2 and meta.units[0] == "second"


def test_convert_reaches_every_series_of_a_plain_tiff(tmp_path):
    source = tmp_path / "two.tif"
    with tifffile.TiffWriter(source) as tif:
        tif.write(np.full((20, 30), 1, np.uint16))
        tif.write(np.full((2, 24, 36), 2, np.uint16), metadata={"axes": "ZYX"})
    first = run("convert", source, tmp_path / "a.zarr")
    assert first.exit_code == 0 and "of 2; the others with --scene: 1" in first.output
    second = run("convert", source, tmp_path / "b.zarr", "--scene", "1")
    assert second.exit_code == 0, second.output
    assert open_image(tmp_path / "b.zarr").data.shape == (2, 24, 36)
    assert run("convert", source, tmp_path / "c.zarr", "--scene", "2").exit_code == 2


def test_zarr_that_is_not_an_image_gets_advice_that_works(tmp_path):
    import zarr

    zarr.create_array(str(tmp_path / "plain.zarr"), shape=(8, 8), dtype="uint8")
    plain = run("info", tmp_path / "plain.zarr")
    assert plain.exit_code == 65 and "save the data as a TIFF" in plain.output
    assert "bigrestore convert " + str(tmp_path) not in plain.output  # convert cannot read it
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="w")
    root.attrs["bigrestore"] = {"outputs": ["mean", "std"]}
    output = run("run", tmp_path / "out.zarr", "-o", tmp_path / "again.zarr")
    assert output.exit_code == 65 and str(tmp_path / "out.zarr" / "mean") in output.output
    assert not (tmp_path / "again.zarr").exists()
