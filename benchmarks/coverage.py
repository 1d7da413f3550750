"""Do the intervals hold their coverage on fields the calibration never saw? One table.

    python benchmarks/coverage.py pairs WORK         # calibration pairs: even W2S val fields
    bigrestore calibrate bigrestore/data/model --low WORK/cal_low.zarr --high WORK/cal_high.zarr \
        --workers 1 --threads-per-worker 2 --data "W2S validation fields 062-080 (even), 256² crops"
    python benchmarks/coverage.py score [--model MODEL] [--out FILE.json]

The bundled model was trained on all W2S training fields (001-060), so its calibration and
this test both come from the validation fields, split in two disjoint, interleaved halves: the
intervals are calibrated on the even-numbered fields 062-080 and scored here on the
odd-numbered fields 061-079 (all 3 channels; centre
``--crop``² of each). Those are restored through ``run``'s own path with the default settings
(in the model's target units, as ``calibrate`` does), then for each level (80, 90, 95 %) two
intervals are scored against the avg400 ground truth, after the same per-image affine fit of
the mean to the truth that ``evaluate`` and ``calibrate`` use:
  - "std x z": mean ± z_level x std, the interval the std alone would suggest if the samples
    were an exact Gaussian posterior (z = 1.28, 1.64, 1.96);
  - "calibrated": the model's stored calibration for exactly these settings (the lower/upper
    outputs of ``run``).
Coverage is the fraction of all pixels inside their interval (pooled over planes), with the
10th percentile over planes beside it (coverage is promised per region on average, not per
pixel or per image); width is the mean interval width in the truth's units (0-255), median
over planes. Last line: the coverage of mean ± 1 std and ± 1 calibrated std (0.683 when a
std is a calibrated Gaussian sigma).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from bigrestore.devices import cpu_name
from bigrestore.diffusion.calibration import LEVELS, coverage, level_key, matching
from bigrestore.io.meta import default_meta
from bigrestore.io.write import write_image
from bigrestore.model.files import read_model
from bigrestore.run.calibrate import restored_planes
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.settings import RunSettings, bundled_model_path

from report import command_line, finish, markdown_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2s"
#: Indices into the 20 W2S validation fields (0 = field 061): the even-numbered fields
#: calibrate, the odd-numbered ones test (interleaved, so that neither half is one stretch of
#: the acquisition).
CALIBRATION_FIELDS = range(1, 20, 2)
TEST_FIELDS = range(0, 20, 2)
#: Two-sided standard normal quantiles of the levels.
Z = {0.8: 1.2816, 0.9: 1.6449, 0.95: 1.9600}


def write_pair(work: Path, fields: range, crop: int, prefix: str) -> tuple[Path, Path]:
    """Centre crops of W2S validation ``fields`` (0-based: 0 = field 061) as a low/high pair."""
    paths = []
    for kind in ("low", "high"):
        stack = tifffile.imread(DATA / f"val_{kind}.tif")[fields.start : fields.stop : fields.step]
        y0 = (stack.shape[-2] - crop) // 2
        x0 = (stack.shape[-1] - crop) // 2
        data = np.ascontiguousarray(stack[..., y0 : y0 + crop, x0 : x0 + crop])
        meta = default_meta("tcyx", ("ch0", "ch1", "ch2"))
        path = work / f"{prefix}_{kind}.zarr"
        paths.append(write_image(path, data, meta, chunks=(1, 1, crop, crop)))
    return paths[0], paths[1]


def scores(images, half_widths) -> tuple[float, float, float]:
    """(pooled coverage, 10th percentile of per-plane coverage, median width)."""
    per_plane = [
        coverage(mean, truth, half)
        for (mean, _, truth), half in zip(images, half_widths, strict=True)
    ]
    covered = [c for c, _ in per_plane]
    return (
        float(np.mean(covered)),
        float(np.percentile(covered, 10)),
        statistics.median(w for _, w in per_plane),
    )


def one_sigma(images, stds) -> float:
    """Pooled coverage of mean ± std (0.683 for a calibrated Gaussian sigma). A coverage, not
    the mean of z²: pixels whose samples all agree (std 0, e.g. pinned at the clip bound) but
    whose truth differs would make that mean infinite and say nothing about the rest."""
    return float(
        np.mean(
            [
                coverage(mean, truth, std)[0]
                for (mean, _, truth), std in zip(images, stds, strict=True)
            ]
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["pairs", "score"])
    parser.add_argument("work", type=Path, nargs="?", help="pairs: where to write them")
    parser.add_argument("--model", type=Path, default=bundled_model_path())
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads-per-worker", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.action == "pairs":
        if args.work is None:
            parser.error("pairs needs WORK")
        args.work.mkdir(parents=True, exist_ok=True)
        print(*write_pair(args.work, CALIBRATION_FIELDS, args.crop, "cal"))
        return
    info = read_model(args.model)
    settings = RunSettings()
    key = settings.resolved(info.unet.train_resolution).calibration_key()
    calibration = matching(info.calibrations, key)
    if calibration is None:
        sys.exit(f"{args.model}: no calibration for the default settings; run bigrestore calibrate")
    cluster = ClusterSpec(workers=args.workers, threads_per_worker=args.threads_per_worker)
    target = settings.changed(output_scale="target", dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        low, high = write_pair(Path(tmp), TEST_FIELDS, args.crop, "test")
        images = restored_planes((low, high), args.model, target, cluster, Path(tmp), None)
    rows = []
    for level in LEVELS:
        plain = scores(images, [Z[level] * std for _, std, _ in images])
        calibrated = scores(images, [calibration.half_width(std, level) for _, std, _ in images])
        rows.append({"level": level, "std_z": plain, "calibrated": calibrated})
    one = {
        "std": one_sigma(images, [std for _, std, _ in images]),
        "calibrated_std": one_sigma(images, [calibration.calibrated_std(s) for _, s, _ in images]),
    }
    print(f"{len(images)} planes of {args.crop}² (W2S validation fields 061-079, odd)")
    print(f"calibration: {calibration.data}, {calibration.regions} regions, key {key}")
    table = markdown_table(
        [
            "level",
            "std x z: coverage (p10 of planes)",
            "width",
            "calibrated: coverage (p10)",
            "width",
        ],
        [
            [
                level_key(r["level"]),
                f"{r['std_z'][0]:.3f} ({r['std_z'][1]:.3f})",
                f"{r['std_z'][2]:.1f}",
                f"{r['calibrated'][0]:.3f} ({r['calibrated'][1]:.3f})",
                f"{r['calibrated'][2]:.1f}",
            ]
            for r in rows
        ],
    )
    table += (
        f"\ncoverage of mean ± 1 std (0.683 if a Gaussian sigma): std {one['std']:.3f}, "
        f"calibrated std {one['calibrated_std']:.3f}"
    )
    report = {
        "command": command_line("coverage.py", argv),
        "cpu": cpu_name(),
        "planes": len(images),
        "rows": rows,
        "one_sigma": one,
    }
    finish("coverage.py", argv, table, args.out, report)


if __name__ == "__main__":
    main()
