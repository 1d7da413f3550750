"""`convert` of vendor formats through bioio: CZI, ND2, LIF, OME-TIFF round trips with pixel
sizes, channel names and scenes; plane-by-plane streaming; a clear error without the extra.

Samples (tests/data/README.md): a real Zeiss CZI (NEUBIAS training resources, CC BY 4.0) and a
real Nikon ND2 (pims_nd2, BSD-3-Clause) are committed; the OME-TIFF is written here with
tifffile and the LIF with a minimal writer of Leica's container layout (below), read back by
bioio-lif's own reader (liffile): no LIF written by Leica software was found that is under
1 MB and may be shipped here (bioio-lif's and readlif's test files are GPL-3.0 or kept in Git
LFS, others are larger or without a licence)."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path
from types import SimpleNamespace

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from conftest import validate_ngff

from bigrestore.cli import cli
from bigrestore.io import vendor
from bigrestore.io.convert import convert_image
from bigrestore.io.images import chunk_census, open_image

DATA = Path(__file__).parent / "data"
CZI = DATA / "xyz__multiple_images.czi"
ND2 = DATA / "cluster.nd2"


def run(*args):
    return CliRunner().invoke(cli, ["convert", *map(str, args)])


def _plugin(module: str) -> None:
    pytest.importorskip("bioio")
    pytest.importorskip(module)


def _without_bioio(monkeypatch) -> None:
    """As if bioio and its plugins were not installed."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("bioio") else find_spec(name, *a),
    )


# ----------------------------------------------------------------------------- CZI, real


def test_czi_round_trip_both_scenes_with_pixel_sizes(tmp_path):
    _plugin("bioio_czi")
    from pylibCZIrw import czi  # Zeiss's own reader: an independent check of the pixels

    for scene in (0, 1):
        out = tmp_path / f"s{scene}.zarr"
        result = run(CZI, out, "--scene", scene, "--chunk", "128")
        assert result.exit_code == 0, result.output
        assert f"scene {scene} (xyz__multiple_images-{scene}) of 2" in result.output
        image = open_image(out)
        assert image.meta.axes == "zyx" and image.data.dtype == np.uint16
        assert image.chunks == (1, 128, 128)
        np.testing.assert_allclose(
            image.meta.scale, (0.3, 0.19564437607395324, 0.19564437607395324)
        )
        assert image.meta.units == ("micrometer",) * 3 and image.meta.channel_names == ("ChA",)
        with czi.open_czi(str(CZI)) as f:
            expected = np.stack(
                [f.read(plane={"Z": z, "C": 0, "T": 0}, scene=scene)[..., 0] for z in range(2)]
            )
        np.testing.assert_array_equal(image.data.compute(), expected)
        validate_ngff(out)
    first, second = (open_image(tmp_path / f"s{s}.zarr").data.compute() for s in (0, 1))
    assert not np.array_equal(first, second)
    by_name = run(CZI, tmp_path / "n.zarr", "--scene", "xyz__multiple_images-1")
    assert by_name.exit_code == 0
    np.testing.assert_array_equal(open_image(tmp_path / "n.zarr").data.compute(), second)
    bad = run(CZI, tmp_path / "bad.zarr", "--scene", "7")
    assert bad.exit_code == 2 and "0 (xyz__multiple_images-0)" in bad.output
    assert not (tmp_path / "bad.zarr").exists()


# ----------------------------------------------------------------------------- ND2, real


def test_nd2_round_trip_with_pixel_sizes_and_channel_names(tmp_path):
    _plugin("bioio_nd2")
    import nd2

    out = tmp_path / "cluster.zarr"
    result = run(ND2, out, "--ngff-version", "0.4")
    assert result.exit_code == 0, result.output
    image = open_image(out)
    with nd2.ND2File(ND2) as f:
        expected = f.asarray()  # (T, Z, C, Y, X)
        voxel = f.voxel_size()
    assert image.meta.axes == "tczyx" and image.ngff_version == "0.4"
    np.testing.assert_array_equal(image.data.compute(), expected.transpose(0, 2, 1, 3, 4))
    np.testing.assert_allclose(image.meta.scale[2:], (voxel.z, voxel.y, voxel.x))
    assert image.meta.channel_names == ("5-FAM/pH 9.0", "FM 4-64/2% CHAPS")
    validate_ngff(out)


# ----------------------------------------------------------------------------- OME-TIFF


def _ome_tiff(path: Path, scenes: list[np.ndarray]) -> None:
    """Multi-series OME-TIFF (one series per scene) with pixel sizes and channel names."""
    with tifffile.TiffWriter(path, ome=True) as tif:
        for k, data in enumerate(scenes):
            tif.write(
                data,
                metadata={
                    "axes": "TCZYX",
                    "Name": f"field {k}",
                    "PhysicalSizeX": 0.11,
                    "PhysicalSizeY": 0.12,
                    "PhysicalSizeZ": 0.5,
                    "Channel": {"Name": ["DAPI", "GFP"]},
                },
            )


def test_ome_tiff_round_trip_scenes_pixel_sizes_channels(tmp_path):
    _plugin("bioio_ome_tiff")
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 4000, (2, 2, 3, 40, 50), dtype=np.uint16) for _ in range(2)]
    source = tmp_path / "stack.ome.tiff"
    _ome_tiff(source, scenes)
    for k in (0, 1):
        out = convert_image(source, tmp_path / f"{k}.zarr", scene=k)
        assert out.scenes == ("Image:0", "Image:1") and out.scene == k
        image = open_image(out.path)
        assert image.meta.axes == "tczyx" and image.meta.channel_names == ("DAPI", "GFP")
        np.testing.assert_allclose(image.meta.scale[2:], (0.5, 0.12, 0.11))
        np.testing.assert_array_equal(image.data.compute(), scenes[k])


def test_ome_tiff_pixel_sizes_keep_the_files_unit(tmp_path):
    """bioio hands on an OME-TIFF's sizes in the file's own unit: 200 nm must not become 200 µm."""
    _plugin("bioio_ome_tiff")
    source = tmp_path / "nm.ome.tif"
    sizes = {"PhysicalSizeX": 200.0, "PhysicalSizeY": 210.0, "PhysicalSizeZ": 1500.0}
    units = {key + "Unit": "nm" for key in sizes}
    data = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    tifffile.imwrite(source, data, ome=True, metadata={"axes": "ZYX", **sizes, **units})
    image = open_image(convert_image(source, tmp_path / "nm.zarr").path)
    assert image.meta.units == ("nanometer",) * 3
    np.testing.assert_allclose(image.meta.scale, (1500.0, 210.0, 200.0))


def test_ome_tiff_without_bioio_falls_back_to_tifffile(tmp_path, monkeypatch):
    data = np.arange(2 * 30 * 20, dtype=np.uint16).reshape(2, 30, 20)
    source = tmp_path / "z.ome.tif"
    tifffile.imwrite(source, data, metadata={"axes": "ZYX", "PhysicalSizeX": 0.2})
    _without_bioio(monkeypatch)
    out = convert_image(source, tmp_path / "z.zarr")
    assert out.scenes == ()  # the tifffile path
    image = open_image(out.path)
    assert image.meta.axes == "zyx" and image.meta.scale[-1] == 0.2
    np.testing.assert_array_equal(image.data.compute(), data)


# ----------------------------------------------------------------------------- LIF


def _lif(path: Path, images: list[tuple[str, np.ndarray, float]]) -> None:
    """A LIF file (version 2 container: XML header, one memory block per image) of uint16
    (C, Z, Y, X) images with an XY pixel size in micrometer; Z steps 1 µm."""
    elements, blocks = [], []
    for k, (name, data, pixel) in enumerate(images):
        n_c, n_z, n_y, n_x = data.shape
        plane = 2 * n_y * n_x
        channels = "".join(
            f'<ChannelDescription DataType="0" ChannelTag="0" Resolution="16" '
            f'NameOfMeasuredQuantity="" Min="0" Max="65535" Unit="" LUTName="{lut}" '
            f'IsLUTInverted="0" BytesInc="{c * plane}" BitInc="0"/>'
            for c, lut in enumerate(("Green", "Red")[:n_c])
        )
        dims = [(1, n_x, pixel, 2), (2, n_y, pixel, 2 * n_x), (3, n_z, 1.0, n_c * plane)]
        dimensions = "".join(
            f'<DimensionDescription DimID="{i}" NumberOfElements="{n}" Origin="0" '
            f'Length="{step * 1e-6 * (n - 1)!r}" Unit="m" BitInc="0" BytesInc="{inc}"/>'
            for i, n, step, inc in dims
        )
        block = f"MemBlock_{k + 1}"
        elements.append(
            f'<Element Name="{name}"><Data><Image><ImageDescription><Channels>{channels}'
            f"</Channels><Dimensions>{dimensions}</Dimensions></ImageDescription></Image></Data>"
            f'<Memory Size="{data.nbytes}" MemoryBlockID="{block}"/><Children/></Element>'
        )
        blocks.append((block, data.transpose(1, 0, 2, 3).astype("<u2").tobytes()))
    xml = (
        '<LMSDataContainerHeader Version="2"><Element Name="sample"><Data/>'
        '<Memory Size="0" MemoryBlockID="MemBlock_0"/>'
        f"<Children>{''.join(elements)}</Children></Element></LMSDataContainerHeader>"
    )
    text = xml.encode("utf-16-le")
    out = struct.pack("<IIBI", 0x70, len(text) + 5, 0x2A, len(xml)) + text
    for block, payload in [("MemBlock_0", b"")] + blocks:
        name = block.encode("utf-16-le")
        out += struct.pack("<IIBQBI", 0x70, 0, 0x2A, len(payload), 0x2A, len(block)) + name
        out += payload
    path.write_bytes(out)


def test_lif_round_trip_scenes_pixel_sizes_channels(tmp_path):
    _plugin("bioio_lif")
    rng = np.random.default_rng(1)
    first = rng.integers(0, 60000, (2, 3, 24, 40), dtype=np.uint16)
    second = rng.integers(0, 60000, (1, 4, 16, 20), dtype=np.uint16)
    source = tmp_path / "sample.lif"
    _lif(source, [("Series001", first, 0.25), ("Series002", second, 0.5)])
    out = convert_image(source, tmp_path / "a.zarr")
    assert out.scenes == ("Series001", "Series002")
    image = open_image(out.path)
    assert image.meta.axes == "czyx" and image.meta.channel_names == ("Green", "Red")
    np.testing.assert_allclose(image.meta.scale, (1.0, 1.0, 0.25, 0.25))
    np.testing.assert_array_equal(image.data.compute(), first)
    two = open_image(convert_image(source, tmp_path / "b.zarr", scene="Series002").path)
    assert two.meta.axes == "zyx" and two.meta.channel_names == ("Green",)
    np.testing.assert_allclose(two.meta.scale, (1.0, 0.5, 0.5))
    np.testing.assert_array_equal(two.data.compute(), second[0])


# ----------------------------------------------------------------------------- streaming


def _fake_bioimage(data: da.Array, order: str, names: list[str]) -> SimpleNamespace:
    """The part of a bioio BioImage that bigrestore uses."""
    sizes = dict(zip(order, data.shape, strict=True))
    return SimpleNamespace(
        scenes=("only",),
        set_scene=lambda index: None,
        dims=SimpleNamespace(order=order, **sizes),
        dask_data=data,
        channel_names=names,
        physical_pixel_sizes=SimpleNamespace(Z=None, Y=0.2, X=0.2),
        time_interval=2.5,
    )


def test_conversion_reads_one_plane_at_a_time(tmp_path, monkeypatch):
    """A (T, C, Z, Y, X) image of 24 planes: every plane is read exactly once, and each is
    written (its 6 chunks on disk, all-zero ones too) before the next one is read: one plane
    in memory."""
    shape = (2, 3, 4, 32, 48)
    out = tmp_path / "big.zarr"
    reads: list[tuple[tuple[int, ...], int]] = []

    def chunks_on_disk() -> int:
        level0 = out / "0"
        return sum(1 for p in level0.rglob("*") if p.is_file() and p.name != "zarr.json")

    def plane(index: tuple[int, ...]) -> np.ndarray:
        reads.append((index, chunks_on_disk()))
        value = sum(i * 10**k for k, i in enumerate(index))  # plane 0 is all zeros
        return np.full((1, 1, 1) + shape[3:], value, dtype=np.uint16)

    blocks = np.empty(shape[:3], dtype=object)
    for index in np.ndindex(*shape[:3]):
        blocks[index] = da.from_delayed(
            dask.delayed(plane)(index), (1, 1, 1) + shape[3:], np.uint16
        )
    data = da.block(blocks[..., None, None].tolist())
    fake = _fake_bioimage(data, "TCZYX", ["a", "b", "c"])
    monkeypatch.setattr(vendor, "_bioimage", lambda path, suffix: fake)
    source = tmp_path / "big.czi"
    source.write_bytes(b"not read: the reader is mocked")
    converted = convert_image(source, out, chunks=16)
    assert [index for index, _ in reads] == list(np.ndindex(*shape[:3]))  # each once, in order
    assert [written for _, written in reads] == [6 * k for k in range(24)]  # 2 x 3 chunks/plane
    image = open_image(converted.path)
    assert image.meta.axes == "tczyx" and image.chunks == (1, 1, 1, 16, 16)
    assert image.meta.scale == (2.5, 1.0, 1.0, 0.2, 0.2) and image.meta.units[0] == "second"
    assert image.meta.channel_names == ("a", "b", "c")
    assert int(image.data[1, 2, 3, 0, 0].compute()) == 1 + 20 + 300
    assert chunk_census(image) == (24 * 6, 24 * 6)  # the all-zero plane's chunks are stored


def test_rgb_samples_become_channels(tmp_path, monkeypatch):
    rgb = np.random.default_rng(2).integers(0, 255, (1, 1, 1, 20, 30, 3), dtype=np.uint8)
    fake = _fake_bioimage(da.from_array(rgb), "TCZYXS", ["Brightfield"])
    monkeypatch.setattr(vendor, "_bioimage", lambda path, suffix: fake)
    source = tmp_path / "rgb.czi"
    source.write_bytes(b"mocked")
    image = open_image(convert_image(source, tmp_path / "rgb.zarr").path)
    assert image.meta.axes == "cyx"
    assert image.meta.channel_names == ("Brightfield R", "Brightfield G", "Brightfield B")
    np.testing.assert_array_equal(image.data.compute(), rgb[0, 0, 0].transpose(2, 0, 1))


# ----------------------------------------------------------------------------- refusals


def test_missing_reader_names_the_extra_and_bad_options_are_refused(tmp_path, monkeypatch):
    source = tmp_path / "x.nd2"
    source.write_bytes(b"\0" * 64)
    _without_bioio(monkeypatch)
    missing = run(source, tmp_path / "x.zarr")
    assert missing.exit_code == 65 and "bigrestore[formats]" in missing.output
    assert "bioio-nd2" in missing.output and len(missing.output.strip().splitlines()) == 1
    assert run(tmp_path / "nope.czi", tmp_path / "y.zarr").exit_code == 66
    tif = tmp_path / "plain.tif"
    tifffile.imwrite(tif, np.zeros((8, 8), np.uint8))
    scene = run(tif, tmp_path / "t.zarr", "--scene", "1")
    assert scene.exit_code == 2 and "--scene" in scene.output
    axes = run(CZI, tmp_path / "c.zarr", "--axes", "zyx")
    assert axes.exit_code == 2 and "--axes" in axes.output
    assert not any(p.suffix == ".zarr" for p in tmp_path.iterdir())
