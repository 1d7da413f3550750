"""Bad inputs are refused with the right exit code and leave every file untouched (tree hashes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import data_path
from test_run import SETTINGS, tiny_model

from bigrestore.cli import cli
from bigrestore.errors import IOFailure
from bigrestore.io.ome import ImageMeta, write_image


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def image(path: Path, array: np.ndarray, axes: str = "yx") -> Path:
    n = len(axes)
    write_image(path, array, ImageMeta(axes, (1.0,) * n, (0.0,) * n, (None,) * n))
    return path


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture
def inputs(tmp_path) -> Path:
    root = tmp_path / "inputs"
    root.mkdir()
    image(root / "good.zarr", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    zarr.create_array(str(root / "plain.zarr"), shape=(8, 8), dtype="uint8")
    complex_store = image(root / "complex.zarr", np.zeros((8, 8), np.float32))
    group = zarr.open_group(str(complex_store), mode="r+")
    group.create_array("0", shape=(8, 8), dtype="complex64", overwrite=True)
    bools = image(root / "bool.zarr", np.zeros((8, 8), np.uint8))
    zarr.open_group(str(bools), mode="r+").create_array("0", shape=(8, 8), dtype="bool", overwrite=True)
    wrong_axes = image(root / "axes.zarr", np.zeros((4, 8, 8), np.uint8), "zyx")
    attrs = dict(zarr.open_group(str(wrong_axes), mode="r").attrs)
    attrs["ome"]["multiscales"][0]["axes"] = attrs["ome"]["multiscales"][0]["axes"][1:]
    zarr.open_group(str(wrong_axes), mode="r+").attrs.put(attrs)
    return root


@pytest.mark.parametrize(("name", "code", "field"), [
    ("missing.zarr", 66, "no such"),
    ("plain.zarr", 65, "store"),
    ("complex.zarr", 65, "dtype"),
    ("bool.zarr", 65, "dtype"),
    ("axes.zarr", 65, "axes"),
])
def test_info_and_run_refuse_bad_inputs_untouched(inputs, tmp_path, name, code, field):
    before = tree_hash(inputs)
    model = tiny_model(tmp_path / "model")
    for args in (("info", inputs / name), ("run", inputs / name, "-o", tmp_path / "out.zarr", "--model", model)):
        exit_code, output = invoke(*args)
        assert exit_code == code, output
        assert field in output and "Traceback" not in output
        assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "out.zarr").exists()
    assert tree_hash(inputs) == before


def test_existing_output_is_not_overwritten(inputs, tmp_path):
    out = image(tmp_path / "existing.zarr", np.ones((8, 8), np.uint8))
    before = tree_hash(out), tree_hash(inputs)
    code, output = invoke("run", inputs / "good.zarr", "-o", out, "--model", tiny_model(tmp_path / "m"))
    assert code == 73 and "--overwrite" in output
    assert (tree_hash(out), tree_hash(inputs)) == before


def test_missing_output_parent_is_refused(tmp_path):
    source = data_path("clean/dsb2018_nuclei_2d.tif")
    code, output = invoke("convert", source, tmp_path / "no" / "dir" / "o.zarr")
    assert code == 73 and "parent directory" in output
    assert not (tmp_path / "no").exists()


def test_corrupted_chunk_is_refused_before_writing(inputs, tmp_path):
    chunk = next(p for p in (inputs / "good.zarr" / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\x00garbage" * 7)
    before = tree_hash(inputs)
    code, output = invoke("run", inputs / "good.zarr", "-o", tmp_path / "o.zarr", "--model", tiny_model(tmp_path / "m"))
    assert code == 65 and "pixels" in output
    assert not (tmp_path / "o.zarr").exists()
    assert tree_hash(inputs) == before


def test_block_failure_on_a_worker_is_an_io_error(inputs, tmp_path):
    """Corruption only level 0 shows (statistics come from elsewhere) fails the block: exit 74."""
    from bigrestore.api import restore as run_restore

    out = tmp_path / "o.zarr"
    model = tiny_model(tmp_path / "m")
    run_restore(inputs / "good.zarr", out, model=model, settings=SETTINGS)  # a valid run first
    chunk = next(p for p in (inputs / "good.zarr" / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\x00garbage" * 7)
    import bigrestore.api as api

    original = api.input_statistics
    api.input_statistics = lambda image, channels, lo, hi: {c: api.Stats(0.0, 1.0) for c in channels}
    try:
        with pytest.raises(IOFailure, match="--resume"):
            run_restore(inputs / "good.zarr", tmp_path / "o2.zarr", model=model, settings=SETTINGS)
    finally:
        api.input_statistics = original
