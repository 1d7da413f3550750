"""`bigrestore calibrate` stores a calibration for one set of sampler settings; `run` with those
settings writes the calibrated interval, with others it writes none and says why."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from conftest import nuclei_stack
from test_run import tiny_model

from bigrestore.cli import cli
from bigrestore.io.images import open_image
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.train.degrade import degrade, random_degradation

SETTINGS = [
    "--samples",
    "3",
    "--steps",
    "3",
    "--tile",
    "32",
    "--overlap",
    "8",
    "--workers",
    "1",
]


def test_calibrate_then_run_writes_the_interval_only_for_its_settings(tmp_path):
    clean = nuclei_stack()[20:23, 64:192, 64:192]
    rng = np.random.default_rng(0)
    low = np.stack([degrade(p, random_degradation(rng, "uint16"), rng) for p in clean])
    write_image(tmp_path / "low.zarr", low, default_meta("tyx"), chunks=(1, 64, 64))
    write_image(tmp_path / "high.zarr", clean, default_meta("tyx"), chunks=(1, 64, 64))
    model = tiny_model(tmp_path / "model", objective="v")
    runner = CliRunner()
    done = runner.invoke(
        cli,
        [
            "calibrate",
            str(model),
            "--low",
            str(tmp_path / "low.zarr"),
            "--high",
            str(tmp_path / "high.zarr"),
            "--out",
            str(tmp_path / "calibrated"),
            *SETTINGS,
        ],
    )
    assert done.exit_code == 0, done.output
    stored = json.loads((tmp_path / "calibrated" / "model.json").read_text())["calibration"][
        "entries"
    ]
    assert len(stored) == 1 and stored[0]["key"]["steps"] == 3 and stored[0]["key"]["tile"] == 32
    assert "calibration" not in json.loads((model / "model.json").read_text())  # --out: a copy

    out = tmp_path / "same.zarr"
    done = runner.invoke(
        cli,
        [
            "run",
            str(tmp_path / "low.zarr"),
            "-o",
            str(out),
            "--model",
            str(tmp_path / "calibrated"),
            *SETTINGS,
        ],
    )
    assert done.exit_code == 0, done.output
    lower, upper = (open_image(out / n).data.compute().astype(float) for n in ("lower", "upper"))
    mean = open_image(out / "mean").data.compute().astype(float)
    assert (lower <= mean + 1).all() and (mean <= upper + 1).all() and (upper > lower).mean() > 0.9
    assert open_image(out / "std_calibrated").data.dtype == np.float32

    other = tmp_path / "other.zarr"
    settings = [*SETTINGS[:3], "4", *SETTINGS[4:]]  # 4 steps: not what was calibrated
    done = runner.invoke(
        cli,
        [
            "run",
            str(tmp_path / "low.zarr"),
            "-o",
            str(other),
            "--model",
            str(tmp_path / "calibrated"),
            *settings,
        ],
    )
    assert done.exit_code == 0, done.output
    assert not (other / "lower").exists() and not (other / "upper").exists()
    manifest = open_image(other / "mean")  # outputs are there, and the manifest says why not
    import zarr

    note = dict(zarr.open_group(str(other), mode="r").attrs["bigrestore"])["calibration"]
    assert (
        note["applied"] is False and "bigrestore calibrate" in note["why"] and manifest is not None
    )
