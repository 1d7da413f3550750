"""``bigrestore calibrate``: intervals that hold their coverage, measured on held-out pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bigrestore.commands.help import SectionedCommand, option, option_name, with_options
from bigrestore.commands.run import OPTIONS as RUN_OPTIONS
from bigrestore.commands.run import ProgressBar
from bigrestore.commands.run_options import settings_from_options

#: The options of ``run`` that a calibration is made for (its key) or that say where it runs.
SHARED = (
    "samples",
    "sampler",
    "steps",
    "eta",
    "spacing",
    "clip_x0",
    "antithetic",
    "flips",
    "clip_bound",
    "tile",
    "overlap",
    "seed",
    "batch",
    "normalise_per",
    "precision",
    "workers",
    "threads_per_worker",
    "gpus",
    "scheduler",
    "device",
)
#: Of those, the RunSettings fields (a calibration's key and how it runs).
SETTINGS = SHARED[: SHARED.index("precision") + 1]
PAIRS = "Held-out pairs"

OPTIONS = [
    option(
        "--low",
        "lows",
        section=PAIRS,
        multiple=True,
        required=True,
        type=click.Path(path_type=Path),
        help="Low-SNR OME-Zarr store of held-out fields (not used in training); repeat with --high.",
    ),
    option(
        "--high",
        "highs",
        section=PAIRS,
        multiple=True,
        required=True,
        type=click.Path(path_type=Path),
        help="Its high-SNR partner (same shape).",
    ),
    option(
        "--out",
        section=PAIRS,
        type=click.Path(path_type=Path),
        default=None,
        help="Write the calibrated model here (a copy) instead of into MODEL.",
    ),
    option(
        "--data",
        section=PAIRS,
        default="",
        help="Words describing the pairs, stored with the calibration.",
    ),
    *[o for o in RUN_OPTIONS if option_name(o) in SHARED],
]


@click.command("calibrate", cls=SectionedCommand)
@click.argument("model", metavar="MODEL", type=click.Path(path_type=Path))
@with_options(OPTIONS)
def command(model: Path, **opts: Any) -> None:
    """Calibrate MODEL's uncertainty for one set of sampler settings on held-out pairs.

    The low stores are restored exactly as `bigrestore run` would with the same options; the
    normalised errors (truth - mean) / std, after an affine fit of mean to truth per image,
    give per coverage level (80, 90, 95%) the factor that makes mean ± factor x std cover
    the truth, by conformal risk control over 64-px regions. The factors are stored in
    MODEL's JSON for exactly these settings; `run` with the same settings then also writes
    OUTPUT/lower, OUTPUT/upper (--coverage) and OUTPUT/std_calibrated.

    \b
    Example:
      bigrestore calibrate mymodel --low calib_low.zarr --high calib_high.zarr --samples 8 --steps 8
    """
    from bigrestore.model.files import write_calibration
    from bigrestore.run.calibrate import calibrate
    from bigrestore.run.cluster import cluster_spec

    if len(opts["lows"]) != len(opts["highs"]):
        raise click.UsageError(
            f"--low and --high must pair up: {len(opts['lows'])} vs {len(opts['highs'])}"
        )
    settings = settings_from_options(opts, SETTINGS)
    cluster = cluster_spec(
        gpus=opts["gpus"],
        workers=opts["workers"],
        scheduler=opts["scheduler"],
        threads_per_worker=opts["threads_per_worker"],
    )
    bar = ProgressBar("restoring held-out pairs")
    try:
        found = calibrate(
            model,
            list(zip(opts["lows"], opts["highs"], strict=True)),
            settings,
            cluster,
            data=opts["data"],
            progress=bar.block,
        )
    finally:
        bar.close()
    written = write_calibration(model, found.to_dict(), opts["out"])
    click.echo(f"calibrated on {found.regions} regions ({found.data})")
    for level, factors in found.factors.items():
        click.echo(
            f"  {float(level):.0%} interval: mean ± {' / '.join(f'{f:.2f}' for f in factors)} x std "
            f"(by std bin)"
        )
    click.echo(f"  calibrated std = {' / '.join(f'{f:.2f}' for f in found.std_factor)} x std")
    click.echo(f"stored in {written / 'model.json'} for: {found.key}")
