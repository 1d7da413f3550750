"""``bigrestore evaluate``: the click command around :func:`bigrestore.evaluate.evaluate`.

Parses arguments, refuses outputs that exist before any compute, prints the summary table
(best median per metric marked with *) and writes the CSV / JSON tables. The evaluation
modules (numpy, scipy, dask) are imported when the command runs, not with the command line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bigrestore.commands.help import with_options
from bigrestore.errors import UsageError
from bigrestore.evaluate.choices import NORMALIZE

if TYPE_CHECKING:
    from bigrestore.evaluate.result import EvaluationResult

_COLUMNS = ("mae", "psnr", "nrmse", "pearson", "ssim", "ms_ssim", "resolution_ratio")
"""Summary columns (the decorrelation resolution itself is in the CSV/JSON)."""


def _planes(text: str | None) -> list[int] | None:
    """'0:6' (a range, end excluded) or '0,2,5'."""
    if text is None:
        return None
    try:
        if ":" in text:
            start, _, stop = text.partition(":")
            return list(range(int(start or 0), int(stop)))
        return [int(v) for v in text.split(",")]
    except ValueError as exc:
        raise click.BadParameter(
            f"expected START:STOP or I,J,K, found {text!r}", param_hint="--planes"
        ) from exc


def _region(text: str) -> tuple[int, int, int, int]:
    try:
        plane, y, x, size = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(
            f"expected PLANE,Y,X,SIZE, found {text!r}", param_hint="--region"
        ) from exc
    return plane, y, x, size


def format_table(result: EvaluationResult) -> str:
    """Plain-text summary: median per method and metric, * on the best of each column."""
    best = result.best()
    columns = [c for c in _COLUMNS if any(c in s for s in result.summary.values())]
    width = max(8, *(len(m) for m in result.methods)) + 2
    lines = ["method".ljust(width) + "".join(c.rjust(max(len(c), 8) + 2) for c in columns)]
    for method in result.methods:
        cells = []
        for column in columns:
            value = result.summary[method].get(column, {}).get("median", math.nan)
            mark = "*" if best.get(column) == method else " "
            cells.append(f"{value:.4g}{mark}".rjust(max(len(column), 8) + 2))
        lines.append(method.ljust(width) + "".join(cells))
    return "\n".join(lines)


OPTIONS = [
    click.option("--names", help="Comma-separated names of the predictions [default: file names]."),
    click.option(
        "--raw", type=click.Path(path_type=Path), help="Raw (noisy) input: scored as a baseline."
    ),
    click.option(
        "--report", "report_dir", type=click.Path(path_type=Path), help="Write an HTML report here."
    ),
    click.option(
        "--patch",
        type=int,
        default=None,
        help="Patch side in pixels; 0 = whole planes [default: 256, or whole planes when they "
        "are smaller].",
    ),
    click.option(
        "--normalize",
        "--normalise",
        "normalize",
        type=click.Choice(NORMALIZE),
        default="percentile",
        show_default=True,
        help="percentile: each plane to its 0.1/99.9 percentiles (L = 1); linear-fit: pred "
        "fitted to the normalised GT (L = 1); none: raw values (L = --data-range or dtype).",
    ),
    click.option("--data-range", type=float, help="L for PSNR/SSIM with --normalize none."),
    click.option("--channel", help="Only this channel (index or name)."),
    click.option("--planes", help="Planes to score: START:STOP or I,J,K (default all)."),
    click.option(
        "--region",
        multiple=True,
        metavar="PLANE,Y,X,SIZE",
        help="Report crop (repeatable) [default: centred 256² of 3 planes].",
    ),
    click.option(
        "--std", type=click.Path(path_type=Path), help="Pixel std map (bigrestore run's std)."
    ),
    click.option("--entropy", type=click.Path(path_type=Path), help="Pixel entropy map."),
    click.option(
        "--samples",
        type=click.Path(path_type=Path),
        help="N individual samples: a directory of N images, or one image holding N copies "
        "of the GT's planes, sample-major. Gives metric vs number of averaged samples.",
    ),
    click.option(
        "--model-dir", type=click.Path(path_type=Path), help="Training curves from DIR/metrics.csv."
    ),
    click.option(
        "--lpips-weights",
        type=click.Path(path_type=Path),
        hidden=True,
        help="Not supported (needs torchvision); LPIPS is reported as not computed.",
    ),
    click.option(
        "--tune-on",
        nargs=2,
        type=click.Path(path_type=Path),
        metavar="RAW_VAL GT_VAL",
        help="Tune the Gaussian baseline's sigma on this pair [default: hold out the first planes].",
    ),
    click.option("--no-gaussian", is_flag=True, help="Skip the Gaussian-filter baseline."),
    click.option(
        "--gaussian-oracle",
        is_flag=True,
        help="Also score the Gaussian whose sigma is chosen per image with the ground truth (the "
        "strongest classic baseline; never starred as best).",
    ),
    click.option(
        "--csv", "csv_path", type=click.Path(path_type=Path), help="Per-patch table (CSV)."
    ),
    click.option("--json", "json_path", type=click.Path(path_type=Path), help="Summary (JSON)."),
    click.option("--overwrite", is_flag=True, help="Replace existing report / CSV / JSON outputs."),
]


@click.command("evaluate")
@click.argument("paths", nargs=-1, metavar="PRED GT [PRED2 ...]", type=click.Path(path_type=Path))
@with_options(OPTIONS)
def command(
    paths: tuple[Path, ...],
    names: str | None,
    raw: Path | None,
    report_dir: Path | None,
    patch: int | None,
    normalize: str,
    data_range: float | None,
    channel: str | None,
    planes: str | None,
    region: tuple[str, ...],
    std: Path | None,
    entropy: Path | None,
    samples: Path | None,
    model_dir: Path | None,
    lpips_weights: Path | None,
    tune_on: tuple[Path, Path] | None,
    no_gaussian: bool,
    gaussian_oracle: bool,
    csv_path: Path | None,
    json_path: Path | None,
    overwrite: bool,
) -> None:
    """Score restorations against ground truth: MAE, PSNR, NRMSE, Pearson, SSIM, MS-SSIM, resolution.

    Every YX plane is one image, cut into PATCH² patches; the table gives the median per method.
    Baselines: the raw input (--raw) and a Gaussian filter of it with a tuned sigma.

    \b
    Example (W2S validation split):
      bigrestore evaluate ddpm.zarr/mean val_high.zarr reg.zarr --names ddpm-avg,regression \\
          --raw val_low.zarr --tune-on train_low.zarr train_high.zarr --report report/
    """
    from bigrestore.evaluate.scoring import evaluate

    preds, name_list = _check_arguments(paths, names, patch, csv_path, json_path, overwrite)
    result = evaluate(
        preds,
        paths[1],
        names=name_list,
        raw=raw,
        normalize=normalize,
        data_range=data_range,
        patch="auto" if patch is None else (patch or None),
        channel=int(channel) if channel and channel.isdigit() else channel,
        planes=_planes(planes),
        report_dir=report_dir,
        std=std,
        entropy=entropy,
        samples=samples,
        model_dir=model_dir,
        gaussian_baseline=not no_gaussian,
        gaussian_oracle=gaussian_oracle,
        val_for_sigma=tune_on or None,
        lpips_weights=lpips_weights,
        regions=[_region(r) for r in region] or None,
        overwrite=overwrite,
    )
    if csv_path:
        result.write_csv(csv_path)
    if json_path:
        result.write_json(json_path)
    _echo_result(result, csv_path, json_path)


def _check_arguments(
    paths: tuple[Path, ...],
    names: str | None,
    patch: int | None,
    csv_path: Path | None,
    json_path: Path | None,
    overwrite: bool,
) -> tuple[list[Path], list[str] | None]:
    """Refuse bad arguments and existing tables before any compute; (predictions, names)."""
    from bigrestore.io.paths import check_output

    if len(paths) < 2:
        raise click.UsageError("expected PRED GT [PRED2 ...]")
    if patch is not None and patch < 0:
        raise click.BadParameter("must be >= 0", param_hint="--patch")
    for path in (csv_path, json_path):
        if path is not None:
            check_output(path, overwrite)
    preds = [paths[0], *paths[2:]]
    name_list = names.split(",") if names else None
    if name_list is not None and len(name_list) != len(preds):
        raise UsageError(f"--names: expected {len(preds)} names, found {len(name_list)}")
    return preds, name_list


def _echo_result(result: EvaluationResult, csv_path: Path | None, json_path: Path | None) -> None:
    """The summary table, how it was computed, the notes and the files written."""
    settings = result.settings
    click.echo(format_table(result))
    n = next(iter(result.summary.values()), {}).get("psnr", {}).get("n", 0)
    scored, total = len(settings["planes_scored"]), settings["planes_total"]
    click.echo(f"median over {n} patches ({scored} of {total} planes scored); * best per column")
    click.echo(f"intensity: {settings['intensity']}")
    gaussian = settings["gaussian"]
    if gaussian:
        click.echo(f"gaussian: sigma {gaussian['sigma']:g} px, tuned on {gaussian['tuned_on']}")
    click.echo("lpips: not computed (needs torchvision's AlexNet and LPIPS weights)")
    for note in result.notes:
        click.echo(f"note: {note}")
    for label, path in (("csv", csv_path), ("json", json_path), ("report", result.report)):
        if path:
            click.echo(f"{label}: {path}")
