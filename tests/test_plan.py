"""`bigrestore plan` and bigrestore.run.estimate: the figures equal the run's plan, the output
size is exact, the disk guard refuses with exit 73, sparse inputs are counted not read, and
the calibration runs the real model in a fresh process (tiny model, small inputs)."""

from __future__ import annotations

import json
import math
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from conftest import synthetic_nuclei
from test_run import tiny_model

from bigrestore.cli import cli
from bigrestore.commands import plan as plan_command
from bigrestore.commands import run as run_command
from bigrestore.errors import CannotCreateOutputError
from bigrestore.io.meta import ImageMeta
from bigrestore.io.ngff import write_metadata
from bigrestore.io.write import create_level0, write_image
from bigrestore.run import estimate
from bigrestore.run import plan as run_plan
from bigrestore.run.plan import make_plan
from bigrestore.run.settings import run_settings

OPTIONS = ["--samples", "2", "--steps", "2", "--tile", "32", "--overlap", "8", "--batch", "4"]
OPTIONS += ["--chunk", "48", "--workers", "2"]
SETTINGS = run_settings(samples=2, sampler="ddim", steps=2, tile=32, overlap=8, batch=4, chunk=48)
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("m") / "model")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("in") / "stack.zarr"
    meta = ImageMeta("zyx", (1.0, 0.5, 0.5), (0.0, 0.0, 0.0), ("micrometer",) * 3, None, "s")
    write_image(path, synthetic_nuclei((3, 100, 90)), meta, chunks=(1, 48, 48))
    return path


def sparse(path: Path, side: int, chunk: int = 64) -> Path:
    """A uint16 yx image of ``side``² whose only stored chunk is the first one."""
    array = create_level0(path, (side, side), np.uint16, "yx", (chunk, chunk))
    array[:chunk, :chunk] = synthetic_nuclei((chunk, chunk))
    meta = ImageMeta("yx", (1.0, 1.0), (0.0, 0.0), (None, None), None, "sparse")
    write_metadata(zarr.open_group(str(path), mode="a"), meta, 1, "0.5", np.uint16)
    return path


def plan_json(*args: object) -> dict:
    result = CliRunner().invoke(cli, ["plan", *(str(a) for a in args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_plan_offers_the_options_of_run():
    run = {plan_command.option_name(o) for o in run_command.OPTIONS}
    plan = {plan_command.option_name(o) for o in plan_command.OPTIONS}
    assert run - plan == set(plan_command.NOT_PLANNED)
    assert plan - run == {"calibration_calls", "as_json"}


def test_figures_are_the_runs_and_the_time_is_calibrated(stack, model, tmp_path):
    output = tmp_path / "out.zarr"
    figures = plan_json(stack, "-o", output, "--model", model, *OPTIONS, "--timing-calls", 2)
    plan = make_plan(stack, output, model, SETTINGS, None, None, "cpu", 1)
    assert figures["blocks"] == len(plan.tasks) == 3 * 3 * 2
    assert figures["tiles"] == plan.cost.tiles
    assert figures["network_evaluations"] == plan.cost.network_evaluations == plan.cost.tiles * 4
    groups = estimate.tile_groups(plan)
    assert sum(groups) == plan.cost.tiles
    assert figures["network_calls"] == sum(math.ceil(n * 2 / 4) * 2 for n in groups)
    # mean, std, entropy: (3, 100, 90) each at level 0, no pyramid above 256 px
    level0 = sum(np.dtype(a.dtype).itemsize for a in plan.level0) * 3 * 100 * 90
    assert len(plan.level0) == 3 and figures["output_level0_bytes"] == level0
    assert figures["disk"]["fits"] and figures["disk"]["required"] == level0 + 18
    calibration = figures["calibration"]
    assert calibration["batch"] == 4 and calibration["tile"] == 32 and calibration["threads"] == 1
    assert calibration["processes"] == min(2, estimate_cores()) and calibration["calls"] == 2
    assert calibration["seconds_per_call"] > 0 and calibration["base_bytes"] > 0
    seconds = figures["seconds"]
    assert seconds["compute"] > 0
    parts = sum(v for k, v in seconds.items() if k != "total")
    assert seconds["total"] == pytest.approx(parts, abs=0.05)
    memory = figures["memory_per_worker"]
    assert memory["peak"] > memory["process_and_model"] > 0
    assert not output.exists() and not figures["needs_allow_missing_chunks"]


def estimate_cores() -> int:
    from bigrestore.devices import usable_cores

    return usable_cores()


def test_a_sparse_input_is_counted_not_read(tmp_path, model, monkeypatch):
    big = sparse(tmp_path / "sparse.zarr", 4096)

    def no_reading(*args, **kwargs):
        raise AssertionError("plan must not read the pixels")

    monkeypatch.setattr(run_plan, "input_statistics", no_reading)
    monkeypatch.setattr(run_plan, "check_finite", no_reading)
    figures = plan_json(big, "--model", model, *OPTIONS, "--calibration-calls", 0)
    assert (figures["chunks_stored"], figures["chunks_expected"]) == (1, 64 * 64)
    assert figures["needs_allow_missing_chunks"] and figures["seconds"] is None
    assert figures["blocks"] == math.ceil(4096 / 48) ** 2
    allowed = plan_json(big, "--model", model, *OPTIONS, "--calibration-calls", 0,
                        "--allow-missing-chunks")  # fmt: skip
    assert not allowed["needs_allow_missing_chunks"]
    text = CliRunner().invoke(cli, ["plan", str(big), "--model", str(model), *OPTIONS,
                                    "--calibration-calls", "0"]).output  # fmt: skip
    assert "63 of 4096" not in text and "1 of 4096 stored" in text
    assert "--allow-missing-chunks" in text and "not estimated" in text


def test_output_bytes_count_every_pyramid_level(tmp_path, model):
    big = sparse(tmp_path / "sparse.zarr", 1024)
    plan = make_plan(big, tmp_path / "o.zarr", model, SETTINGS, None, None, "cpu", 1, True,
                     statistics=False)  # fmt: skip
    level0, total = estimate.output_bytes(plan)
    item = sum(np.dtype(a.dtype).itemsize for a in plan.level0)  # mean, std, entropy
    assert level0 == item * 1024 * 1024
    assert total == item * (1024**2 + 512**2 + 256**2) + math.prod(plan.done_shape)


def test_run_refuses_outputs_that_cannot_fit(stack, model, tmp_path, monkeypatch):
    plan = make_plan(stack, tmp_path / "out.zarr", model, SETTINGS, None, None, "cpu", 1)
    need = estimate.output_bytes(plan)[1]
    monkeypatch.setattr(estimate.shutil, "disk_usage", lambda p: Usage(10**12, 0, need))
    assert estimate.check_disk_space(plan, tmp_path / "out.zarr").fits
    monkeypatch.setattr(estimate.shutil, "disk_usage", lambda p: Usage(10**12, 0, need - 1))
    with pytest.raises(CannotCreateOutputError, match="disk space") as refused:
        estimate.check_disk_space(plan, tmp_path / "out.zarr")
    assert refused.value.exit_code == 73 and f"{need / 2**30:.2f} GiB" in str(refused.value)
    existing = tmp_path / "out.zarr"  # an existing output (replaced or resumed) counts as free
    existing.mkdir()
    (existing / "old").write_bytes(b"x" * 10)
    assert estimate.check_disk_space(plan, existing).fits


def test_schedule_of_tile_groups():
    assert estimate.makespan([], 2) == 0
    assert estimate.makespan([3.0, 1.0], 4) == 3.0
    assert estimate.makespan([1.0, 1.0, 1.0, 1.0], 2) == 2.0
    assert estimate.makespan([4.0, 1.0, 1.0, 1.0, 1.0], 2) == 4.0


def test_a_calibration_that_cannot_run_is_refused_like_the_run(stack, model):
    result = CliRunner().invoke(
        cli, ["plan", str(stack), "--model", str(model), *OPTIONS, "--device", "cuda"]
    )
    torch_cuda = "torch sees no CUDA device" in result.output
    assert result.exit_code == (2 if torch_cuda else 0), result.output


def test_plan_says_what_run_would_refuse(stack, model, tmp_path):
    """The figures stand, and the exit code is the one run would give for the location."""
    inside = CliRunner().invoke(
        cli,
        [
            "plan",
            str(stack),
            "-o",
            str(stack / "out.zarr"),
            "--model",
            str(model),
            *OPTIONS,
            "--timing-calls",
            "0",
        ],  # fmt: skip
    )
    assert (
        inside.exit_code == 73 and "blocks" in inside.output and "inside the input" in inside.output
    )
    assert not (stack / "out.zarr").exists()
    existing = tmp_path / "existing.zarr"
    CliRunner().invoke(
        cli, ["run", str(stack), "-o", str(existing), "--model", str(model), *OPTIONS]
    )
    again = CliRunner().invoke(
        cli,
        [
            "plan",
            str(stack),
            "-o",
            str(existing),
            "--model",
            str(model),
            *OPTIONS,
            "--timing-calls",
            "0",
        ],  # fmt: skip
    )
    assert again.exit_code == 0 and "exists: run needs --overwrite or --resume" in again.output
    if not torch.cuda.is_available():
        gpus = CliRunner().invoke(cli, ["plan", str(stack), "--model", str(model), "--gpus", "1"])
        assert gpus.exit_code == 2 and "GPU" in gpus.output
