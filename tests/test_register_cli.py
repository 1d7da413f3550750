"""`bigrestore register` on a real W2S pair with a known shift."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from conftest import data_path, validate_ngff
from scipy import ndimage

from bigrestore.cli import cli
from bigrestore.io.images import open_image
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image

pytest.importorskip("itk")


def test_register_recovers_shift_and_masks_reference(tmp_path):
    high = tifffile.imread(data_path("w2s/val_high.tif"))[:2, 0, 100:356, 100:356]
    high = high.astype(np.float32)
    low = tifffile.imread(data_path("w2s/val_low.tif"))[:2, 0].astype(np.float32)
    # Move the low frame by (+3, -2) px (cut from the full frame so no zero border is introduced).
    moved = np.stack([ndimage.shift(f, (3.0, -2.0), order=1)[100:356, 100:356] for f in low])
    meta = ImageMeta("tyx", (1.0, 0.1, 0.1), (0.0,) * 3, (None, "micrometer", "micrometer"))
    write_image(tmp_path / "low.zarr", moved, meta)
    write_image(tmp_path / "high.zarr", high, meta)
    result = CliRunner().invoke(
        cli,
        [
            "register",
            str(tmp_path / "low.zarr"),
            str(tmp_path / "high.zarr"),
            "-o",
            str(tmp_path / "reg.zarr"),
            "--masked-high",
            str(tmp_path / "hm.zarr"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = next(line for line in result.output.splitlines() if line.startswith("mean alignment"))
    before, after = (float(v) for v in summary.split("before ")[1].split(", after "))
    assert after > before + 0.02
    for line in result.output.splitlines()[:2]:  # one transform per field: the applied shift
        dy, dx = (float(v) for v in line.split("shift (")[1].split(")")[0].split(", "))
        assert abs(dy - 3.0) < 0.3 and abs(dx + 2.0) < 0.3, line
    validate_ngff(tmp_path / "reg.zarr")
    masked = open_image(tmp_path / "hm.zarr").data.compute()
    assert (masked == 0).any() and masked.shape == high.shape  # padding reproduced on the reference
    again = CliRunner().invoke(
        cli,
        [
            "register",
            str(tmp_path / "low.zarr"),
            str(tmp_path / "high.zarr"),
            "-o",
            str(tmp_path / "reg.zarr"),
        ],
    )
    assert again.exit_code == 73


def test_register_refuses_mismatched_shapes(tmp_path):
    meta = ImageMeta("yx", (1.0, 1.0), (0.0, 0.0), (None, None))
    write_image(tmp_path / "a.zarr", np.zeros((64, 64), np.uint8), meta)
    write_image(tmp_path / "b.zarr", np.zeros((64, 80), np.uint8), meta)
    result = CliRunner().invoke(
        cli,
        [
            "register",
            str(tmp_path / "a.zarr"),
            str(tmp_path / "b.zarr"),
            "-o",
            str(tmp_path / "c.zarr"),
        ],
    )
    assert result.exit_code == 65 and "shape" in result.output
    assert not (tmp_path / "c.zarr").exists()
