"""``bigrestore demo``: the whole pipeline on the bundled sample with the bundled model.

TIFF → OME-Zarr → restore on an embedded local Dask cluster (mean, std, entropy, multiscale)
→ evaluate against the sample's ground truth → HTML report. Defaults are those of ``run``.
"""

from __future__ import annotations

import importlib.resources
import shutil
import time
from pathlib import Path

import click

from bigrestore.commands.help import with_options
from bigrestore.errors import CannotCreateOutputError, MissingInputError

#: What the demo writes in its directory; --overwrite removes these and nothing else.
DEMO_ENTRIES = (
    "sample_low.zarr",
    "sample_high.zarr",
    "restored.zarr",
    "report",
    "metrics.csv",
    "metrics.json",
)

OPTIONS = [
    click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=Path("bigrestore-demo"),
        show_default=True,
        help="Directory for everything the demo writes.",
    ),
    click.option(
        "--samples", default=8, show_default=True, help="Samples per tile (as `run`; paper: 15)."
    ),
    click.option(
        "--steps", default=8, show_default=True, help="Sampler steps per sample (as `run`)."
    ),
    click.option(
        "--sampler",
        type=click.Choice(["ddim", "dpmpp_2m", "ancestral"]),
        default="ddim",
        show_default=True,
    ),
    click.option(
        "--workers",
        default=1,
        show_default=True,
        help="CPU Dask workers (the cores are shared out).",
    ),
    click.option("--gpus", default=0, help="Use N GPUs instead (one worker each)."),
    click.option("--overwrite", is_flag=True, help="Replace what an earlier demo wrote in --out."),
]


def sample_path(name: str) -> Path:
    """A file of the bundled sample (W2S validation crop, see bigrestore/data/README.md)."""
    return Path(str(importlib.resources.files("bigrestore") / "data" / "sample" / name))


@click.command("demo")
@with_options(OPTIONS)
def command(
    out: Path, samples: int, steps: int, sampler: str, workers: int, gpus: int, overwrite: bool
) -> None:
    """Restore the bundled real sample with the bundled model and write an HTML report.

    The sample is a 256x256 crop of a W2S validation field (widefield, single frame "avg1"
    as input, 400-frame average as ground truth). Samples, steps and sampler default to those of
    `bigrestore run`; the demo runs one worker with all cores as its threads and also saves the
    samples (OUT/restored.zarr/samples).
    """
    from bigrestore.run.settings import bundled_model_path

    model = bundled_model_path()
    if not (model / "model.json").exists():
        raise MissingInputError(f"{model}: bundled model missing from this installation")
    prepare_demo_directory(out, overwrite)
    started = time.perf_counter()
    where = f"{gpus} GPU(s)" if gpus else f"{workers} CPU worker(s)"
    click.echo(f"bigrestore demo: {samples} samples x {steps} {sampler} steps per tile on {where}")
    low, high = convert_sample(out)
    restored = restore_sample(
        low, out / "restored.zarr", model, samples, steps, sampler, workers, gpus
    )
    report = evaluate_sample(out, low, high, restored, model)
    click.echo(f"\ndone in {time.perf_counter() - started:.0f} s. Open:")
    click.echo(f"  report     {report / 'index.html'}")
    click.echo(f"  metrics    {out / 'metrics.csv'}")
    click.echo(
        f"  in napari  napari --plugin napari-ome-zarr {restored / 'mean'} {restored / 'std'} {low}"
    )


def prepare_demo_directory(out: Path, overwrite: bool) -> None:
    """Create ``out``; an existing non-empty one only with ``overwrite``, and then only the
    demo's own entries are removed (anything else there is refused, never deleted)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CannotCreateOutputError(
                f"{out}: exists and is not empty; pass --overwrite or --out"
            )
        foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_ENTRIES)
        if foreign:
            raise CannotCreateOutputError(
                f"{out}: --overwrite replaces only what the demo wrote, and it also holds {foreign[:3]}; "
                "choose another --out"
            )
        for name in DEMO_ENTRIES:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def convert_sample(out: Path) -> tuple[Path, Path]:
    from bigrestore.io.convert import convert_tiff

    low, high = out / "sample_low.zarr", out / "sample_high.zarr"
    convert_tiff(sample_path("w2s_val_low.tif"), low, axes="yx")
    convert_tiff(sample_path("w2s_val_high.tif"), high, axes="yx")
    click.echo(f"1/3 converted the bundled sample to OME-Zarr: {low}, {high}")
    return low, high


def restore_sample(
    low: Path,
    restored: Path,
    model: Path,
    samples: int,
    steps: int,
    sampler: str,
    workers: int,
    gpus: int,
) -> Path:
    from bigrestore.commands.run import ProgressBar, dashboard_line
    from bigrestore.devices import usable_cores
    from bigrestore.run.cluster import cluster_spec
    from bigrestore.run.restore import restore
    from bigrestore.run.settings import run_settings

    steps_or_all = None if sampler == "ancestral" else steps
    # the samples are kept (restored.zarr/samples/NN.zarr) for the report's samples curve
    settings = run_settings(
        samples=samples,
        sampler=sampler,
        steps=steps_or_all,
        chunk=256,
        batch=16,
        save_samples=True,
    )
    # one block of 256²: its worker gets all the cores (the output then depends on their count)
    cluster = cluster_spec(
        gpus=gpus, workers=workers, threads_per_worker=max(1, usable_cores() // workers)
    )
    bar = ProgressBar("2/3 restoring")
    try:
        result = restore(
            low,
            restored,
            model=model,
            settings=settings,
            cluster=cluster,
            progress=bar.block,
            tile_progress=bar.tiles,
            on_client=dashboard_line,
        )
    finally:
        bar.close()
    click.echo(
        f"2/3 restored {result.tiles} tiles in {result.seconds:.1f} s: {restored}/mean, /std, /entropy"
    )
    return restored


def evaluate_sample(out: Path, low: Path, high: Path, restored: Path, model: Path) -> Path:
    """Score the restoration against the ground truth beside the raw input and the strongest
    Gaussian filter (its sigma chosen per image with the ground truth: the sample is a single
    image, so no planes are left to tune on), with the samples curve; write the report."""
    from bigrestore.commands.evaluate import format_table
    from bigrestore.evaluate.scoring import evaluate

    report = out / "report"
    evaluation = evaluate(
        [restored / "mean"],
        high,
        names=["bigrestore DDPM-avg"],
        raw=low,
        patch=128,
        report_dir=report,
        std=restored / "std",
        entropy=restored / "entropy",
        samples=restored / "samples" if (restored / "samples").is_dir() else None,
        model_dir=model,
        gaussian_oracle=True,
    )
    evaluation.write_csv(out / "metrics.csv")
    evaluation.write_json(out / "metrics.json")
    click.echo("3/3 evaluated against the 400-frame average (percentile-normalised):")
    click.echo(format_table(evaluation))
    return report
