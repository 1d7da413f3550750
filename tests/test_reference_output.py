"""Outputs are pinned: the bundled model on a fixed crop of the bundled sample gives the same
bytes of mean, std and entropy as recorded in ``tests/data/reference_outputs.npz``.

The reference was recorded before the package was reorganised (issue 11), so any change of
the numbers by a refactor fails here. It runs the CLI in a child process whose CPU kernels
are pinned to one instruction set (AVX2 for oneDNN, ATen and MKL, one thread, fp32), which
every x86-64 machine of the test pool has, so the bytes do not depend on which CPU runs CI.
The torch thread count is fixed too (2, what the recording used): with AVX2 kernels a
convolution sums in another order with another thread count.
Record again (only for an intended change of the numbers) with
``python tests/test_reference_output.py --record``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

REFERENCE = Path(__file__).parent / "data" / "reference_outputs.npz"
SAMPLE = Path(__file__).resolve().parents[1] / "bigrestore" / "data" / "sample" / "w2s_val_low.tif"
PINNED_CPU = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
}
RUN_OPTIONS = [
    "--samples",
    "2",
    "--steps",
    "4",
    "--seed",
    "3",
    "--tile",
    "64",
    "--overlap",
    "16",
    "--chunk",
    "64",
    "--precision",
    "fp32",
    "--workers",
    "1",
    "--threads-per-worker",
    "2",
    # the settings of the recording (defaults then; since then the defaults keep the input's
    # dtype and scale): the pinned numbers stay those of the recording
    "--dtype",
    "float32",
    "--output-scale",
    "target",
]
OUTPUTS = ("mean", "std", "entropy")


def restore_fixed_crop(work: Path) -> dict[str, np.ndarray]:
    """Run ``bigrestore convert`` and ``bigrestore run`` (bundled model) on a 128x160 crop."""
    crop = tifffile.imread(SAMPLE)[64:192, 48:208]
    tifffile.imwrite(work / "crop.tif", crop)
    env = {**os.environ, **PINNED_CPU}
    bigrestore = [sys.executable, "-m", "bigrestore.cli"]
    for command in (
        [*bigrestore, "convert", str(work / "crop.tif"), str(work / "crop.zarr"), "--axes", "yx"],
        [*bigrestore, "run", str(work / "crop.zarr"), "-o", str(work / "out.zarr"), *RUN_OPTIONS],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    import zarr

    return {
        name: np.asarray(zarr.open_array(str(work / "out.zarr" / name / "0"), mode="r")[...])
        for name in OUTPUTS
    }


def test_bundled_model_outputs_are_unchanged(tmp_path):
    if not REFERENCE.exists():
        pytest.fail(f"{REFERENCE} missing: record it with python {Path(__file__).name} --record")
    recorded = np.load(REFERENCE)
    outputs = restore_fixed_crop(tmp_path)
    for name in OUTPUTS:
        got, want = outputs[name], recorded[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        differ = np.count_nonzero(got != want)
        assert differ == 0, (
            f"{name}: {differ} of {got.size} values differ, max |diff| "
            f"{float(np.max(np.abs(got.astype(np.float64) - want))):.3g}"
        )


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        arrays = restore_fixed_crop(Path(tmp))
    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(REFERENCE, **arrays)
    print(
        f"recorded {REFERENCE}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items())
    )
