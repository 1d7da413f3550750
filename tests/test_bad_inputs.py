"""Bad inputs are refused with the right exit code and leave every file untouched (tree hashes)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr
from click.testing import CliRunner
from conftest import data_path
from test_run import SETTINGS, tiny_model
from test_train import TINY

from bigrestore.cli import cli
from bigrestore.errors import IOFailure
from bigrestore.io.meta import ImageMeta
from bigrestore.io.write import write_image


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
    zarr.open_group(str(bools), mode="r+").create_array(
        "0", shape=(8, 8), dtype="bool", overwrite=True
    )
    wrong_axes = image(root / "axes.zarr", np.zeros((4, 8, 8), np.uint8), "zyx")
    attrs = dict(zarr.open_group(str(wrong_axes), mode="r").attrs)
    attrs["ome"]["multiscales"][0]["axes"] = attrs["ome"]["multiscales"][0]["axes"][1:]
    zarr.open_group(str(wrong_axes), mode="r+").attrs.put(attrs)
    return root


@pytest.mark.parametrize(
    ("name", "code", "field"),
    [
        ("missing.zarr", 66, "no such"),
        ("plain.zarr", 65, "store"),
        ("complex.zarr", 65, "dtype"),
        ("bool.zarr", 65, "dtype"),
        ("axes.zarr", 65, "axes"),
    ],
)
def test_info_and_run_refuse_bad_inputs_untouched(inputs, tmp_path, name, code, field):
    before = tree_hash(inputs)
    model = tiny_model(tmp_path / "model")
    for args in (
        ("info", inputs / name),
        ("run", inputs / name, "-o", tmp_path / "out.zarr", "--model", model),
    ):
        exit_code, output = invoke(*args)
        assert exit_code == code, output
        assert field in output and "Traceback" not in output
        assert len(output.strip().splitlines()) == 1
    assert not (tmp_path / "out.zarr").exists()
    assert tree_hash(inputs) == before


def test_existing_output_is_not_overwritten(inputs, tmp_path):
    out = image(tmp_path / "existing.zarr", np.ones((8, 8), np.uint8))
    before = tree_hash(out), tree_hash(inputs)
    code, output = invoke(
        "run", inputs / "good.zarr", "-o", out, "--model", tiny_model(tmp_path / "m")
    )
    assert code == 73 and "--overwrite" in output
    assert (tree_hash(out), tree_hash(inputs)) == before


def test_missing_output_parent_is_refused(tmp_path):
    source = data_path("clean/dsb2018_nuclei_2d.tif")
    code, output = invoke("convert", source, tmp_path / "no" / "dir" / "o.zarr")
    assert code == 73 and "parent directory" in output
    assert not (tmp_path / "no").exists()


def test_corrupted_chunk_is_refused_before_writing(inputs, tmp_path):
    for chunk in (inputs / "good.zarr" / "0").rglob("*"):  # every one: whichever is read first
        if chunk.is_file() and chunk.name != "zarr.json":
            chunk.write_bytes(b"\x00garbage" * 7)
    before = tree_hash(inputs)
    code, output = invoke(
        "run",
        inputs / "good.zarr",
        "-o",
        tmp_path / "o.zarr",
        "--model",
        tiny_model(tmp_path / "m"),
    )
    assert code == 65 and "pixels" in output
    assert not (tmp_path / "o.zarr").exists()
    assert tree_hash(inputs) == before


def test_block_failure_on_a_worker_is_an_io_error(inputs, tmp_path):
    """Corruption only level 0 shows (statistics come from elsewhere) fails the block: exit 74."""
    from bigrestore.run.restore import restore as run_restore

    out = tmp_path / "o.zarr"
    model = tiny_model(tmp_path / "m")
    run_restore(inputs / "good.zarr", out, model=model, settings=SETTINGS)  # a valid run first
    for chunk in (inputs / "good.zarr" / "0").rglob("*"):  # every one: whichever is read first
        if chunk.is_file() and chunk.name != "zarr.json":
            chunk.write_bytes(b"\x00garbage" * 7)
    import bigrestore.run.plan as plan

    original = plan.input_statistics
    plan.input_statistics = lambda image, channels, lo, hi, per: (
        (plan.Stats(0.0, 1.0),) * (max(channels) + 1),
    )
    target_scale = SETTINGS.changed(output_scale="target")  # no fit reads first
    try:
        with pytest.raises(IOFailure, match="--resume"):
            run_restore(
                inputs / "good.zarr", tmp_path / "o2.zarr", model=model, settings=target_scale
            )
        with pytest.raises(IOFailure, match="damaged") as refused:  # the fit reads it: refused
            run_restore(inputs / "good.zarr", tmp_path / "o3.zarr", model=model, settings=SETTINGS)
        assert "Traceback" not in str(refused.value)
        assert not (tmp_path / "o3.zarr").exists()
    finally:
        plan.input_statistics = original


# ----------------------------------------------------------------------------- read-only output

#: Runs CLI commands in a child process and prints one JSON line. argv: MODE CASES_JSON where
#: MODE "drop" (root only) first removes the capabilities that let root ignore mode bits from
#: the bounding set (prctl PR_CAPBSET_DROP = 24; CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
#: CAP_FOWNER = 1, 2, 3) and execs itself again as MODE "as-is", so root obeys the modes of
#: directories it owns while still reading its own files. The compute entry points are
#: replaced by a tripwire: a refusal must come before any statistics pass.
CLI_IN_CHILD = r"""
import ctypes, json, os, sys
mode, cases = sys.argv[1], json.loads(sys.argv[2])
if mode == "drop":
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    for cap in (1, 2, 3):
        if prctl(24, cap, 0, 0, 0) != 0:
            sys.exit(f"prctl(PR_CAPBSET_DROP, {cap}): {os.strerror(ctypes.get_errno())}")
    os.execv(sys.executable, [sys.executable, __file__, "as-is", sys.argv[2]])
probe = os.path.join(cases["read_only"], ".probe")
try:
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
except PermissionError:
    pass
else:
    os.unlink(probe)
    print(json.dumps({"writable": True}))
    sys.exit(0)
from click.testing import CliRunner
import bigrestore.run.restore, bigrestore.train.trainer
from bigrestore.cli import cli

def tripwire(*args, **kwargs):
    raise AssertionError("computed before the output was refused")

import bigrestore.run.plan
bigrestore.run.plan.input_statistics = tripwire
bigrestore.train.trainer.target_statistics = tripwire
results = []
for args in cases["commands"]:
    result = CliRunner().invoke(cli, args)
    failure = None if isinstance(result.exception, SystemExit) else repr(result.exception)
    results.append([result.exit_code, result.output, failure])
print(json.dumps({"writable": False, "results": results}))
"""


def _cli_as_unprivileged(scratch: Path, read_only: Path, commands: list[list[str]]) -> list:
    """Run ``commands`` in a child process that mode bits bind: as this user when not root;
    as root without its permission-bypassing capabilities, else as user nobody (65534).
    Skips when neither can write-protect ``read_only`` here (e.g. no CAP_SETPCAP/CAP_SETUID,
    or nobody cannot run this Python); returns [exit code, output, unexpected exception]."""
    script = scratch / "cli_in_child.py"
    script.write_text(CLI_IN_CHILD)
    script.chmod(0o644)
    home = scratch / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    env = {**os.environ, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    cases = json.dumps({"read_only": str(read_only), "commands": commands})
    if os.geteuid() != 0:
        ways = [("this user", "as-is", {})]
    else:
        nobody = {"user": 65534, "group": 65534, "extra_groups": []}
        ways = [("root without CAP_DAC_OVERRIDE", "drop", {}), ("user nobody", "as-is", nobody)]
    reasons = []
    for name, mode, identity in ways:
        try:
            done = subprocess.run(
                [sys.executable, str(script), mode, cases],
                capture_output=True,
                text=True,
                env=env,
                cwd=scratch,
                timeout=300,
                **identity,
            )
        except OSError as exc:  # e.g. this Python lies in a directory nobody cannot enter
            reasons.append(f"{name}: {exc}")
            continue
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            if os.geteuid() != 0:
                raise AssertionError(done.stderr)
            reasons.append(f"{name}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
            continue
        report = json.loads(lines[-1])
        if report["writable"]:
            reasons.append(f"{name}: can still write to a directory of mode 0555")
            continue
        return report["results"]
    pytest.skip("no way to make a read-only location here: " + "; ".join(reasons))


def _snapshot(root: Path) -> tuple[str, list[str]]:
    """Every file's bytes and every path (directories too), so a created empty directory shows."""
    return tree_hash(root), sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def scratch():
    """A directory every user may enter (pytest's tmp_path lies under a 0700 directory when
    root), removed afterwards even where a test left it read-only."""
    root = Path(tempfile.mkdtemp(prefix="bigrestore-ro-"))
    root.chmod(0o755)
    yield root
    for directory, _, _ in os.walk(root):
        os.chmod(directory, 0o755)
    shutil.rmtree(root)


def test_read_only_output_location_is_refused_before_compute(scratch):
    """run, convert and train on a read-only location: exit 73 naming it, no traceback, no
    statistics pass, nothing changed (new outputs, --overwrite of existing ones, --resume)."""
    inputs = scratch / "inputs"
    inputs.mkdir()
    pixels = np.random.default_rng(0).integers(0, 4000, (2, 64, 64)).astype(np.uint16)
    image(inputs / "good.zarr", pixels[0])
    tifffile.imwrite(inputs / "small.tif", pixels[0])
    model = tiny_model(inputs / "model")
    image(inputs / "low.zarr", pixels, "zyx")
    image(inputs / "high.zarr", pixels[::-1].copy(), "zyx")
    (inputs / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "epochs": 1, "steps_per_epoch": 1}))
    locked = scratch / "locked"
    locked.mkdir()
    image(locked / "old.zarr", pixels[1])
    old_run = zarr.open_group(str(locked / "old_run.zarr"), mode="w")  # what a run leaves
    old_run.attrs["bigrestore"] = {"status": "complete", "outputs": ["mean"]}
    (locked / "trained").mkdir()
    (locked / "trained" / "metrics.csv").write_text("step\n")
    (locked / "empty").mkdir()
    for directory, _, files in os.walk(scratch / "inputs"):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(Path(directory, name), 0o644)
    for directory, _, files in os.walk(locked, topdown=False):
        for name in files:
            os.chmod(Path(directory, name), 0o444)
        os.chmod(directory, 0o555)
    before = _snapshot(inputs), _snapshot(locked)

    run = ["run", inputs / "good.zarr", "--model", model, "-o"]
    convert = ["convert", inputs / "small.tif"]
    train = [
        "train",
        "--low",
        inputs / "low.zarr",
        "--high",
        inputs / "high.zarr",
        "--config",
        inputs / "tiny.yaml",
        "--device",
        "cpu",
        "--out",
    ]
    commands = [
        [*run, locked / "new.zarr"],
        [*run, locked / "old_run.zarr", "--overwrite"],
        [*run, locked / "old.zarr", "--resume"],
        [*convert, locked / "new.zarr"],
        [*convert, locked / "old.zarr", "--overwrite"],
        [*train, locked / "model"],
        [*train, locked / "empty"],
        [*train, locked / "trained", "--overwrite"],
    ]
    results = _cli_as_unprivileged(scratch, locked, [[str(a) for a in c] for c in commands])
    for command, (code, output, failure) in zip(commands, results, strict=True):
        where = " ".join(str(a) for a in command)
        assert failure is None, f"{where}: {failure}"
        assert code == 73, f"{where}: exit {code}: {output}"
        assert "not writable" in output and str(locked) in output, f"{where}: {output}"
        assert "Traceback" not in output and len(output.strip().splitlines()) == 1
    assert (_snapshot(inputs), _snapshot(locked)) == before


def test_a_channel_named_twice_or_absent_is_refused(tmp_path):
    two = image(tmp_path / "two.zarr", np.zeros((2, 16, 16), np.uint16), "cyx")
    one = image(tmp_path / "one.zarr", np.zeros((16, 16), np.uint16))
    code, output = invoke(
        "run",
        two,
        "-o",
        tmp_path / "out.zarr",
        "--channels",
        "0,0",
        "--model",
        tiny_model(tmp_path / "m"),
    )
    assert code == 65 and "channel 0 twice" in output and not (tmp_path / "out.zarr").exists()
    code, output = invoke("evaluate", one, one, "--channel", "3", "--patch", "0")
    assert code == 65 and "no c axis" in output
    code, output = invoke("evaluate", one, one, "--channel", "0", "--patch", "0", "--no-gaussian")
    assert code == 0, output


def test_overwrite_replaces_only_its_own_kind_of_output(tmp_path):
    """run --overwrite must not delete a converted image (a user's input, -o pointed at it by
    mistake), nor convert --overwrite a run's results."""
    model = tiny_model(tmp_path / "m")
    fast = ("--samples", 2, "--steps", 2, "--tile", 32, "--overlap", 8, "--workers", 1)
    tifffile.imwrite(tmp_path / "a.tif", np.arange(32 * 32, dtype=np.uint16).reshape(32, 32))
    assert invoke("convert", tmp_path / "a.tif", tmp_path / "a.zarr")[0] == 0
    assert invoke("convert", tmp_path / "a.tif", tmp_path / "b.zarr")[0] == 0
    before = tree_hash(tmp_path / "b.zarr")
    code, output = invoke("run", tmp_path / "a.zarr", "-o", tmp_path / "b.zarr", "--overwrite",
                          "--model", model, *fast)  # fmt: skip
    assert code == 73 and "converted or registered image" in output
    assert tree_hash(tmp_path / "b.zarr") == before
    code, output = invoke("run", tmp_path / "a.zarr", "-o", tmp_path / "r.zarr", "--model", model,
                          *fast)  # fmt: skip
    assert code == 0, output
    before = tree_hash(tmp_path / "r.zarr")
    code, output = invoke("convert", tmp_path / "a.tif", tmp_path / "r.zarr", "--overwrite")
    assert code == 73 and "a run's output" in output
    assert tree_hash(tmp_path / "r.zarr") == before
    code, output = invoke("convert", tmp_path / "a.tif", tmp_path / "b.zarr", "--overwrite")
    assert code == 0, output  # its own kind: replaced


def test_an_output_dtype_below_every_level_is_refused_before_writing(tmp_path):
    values = 500 + np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 200
    source = image(tmp_path / "bright.zarr", values)
    code, output = invoke("run", source, "-o", tmp_path / "out.zarr", "--dtype", "uint8",
                          "--model", tiny_model(tmp_path / "m"))  # fmt: skip
    assert code == 2 and "every pixel would clip" in output and "from 50" in output
    assert not (tmp_path / "out.zarr").exists()
