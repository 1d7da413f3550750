"""``bigrestore demo``: the whole pipeline on the bundled sample with the bundled model.

TIFF → OME-Zarr → restore on an embedded local Dask cluster (mean, std, entropy, multiscale)
→ evaluate against the sample's ground truth → HTML report. Defaults are chosen so it finishes
in a few minutes on a 2-core laptop CPU (fast sampler, modest N).
"""

from __future__ import annotations

import importlib.resources
import shutil
import time
from pathlib import Path
from typing import Any

import click

from bigrestore.errors import CannotCreateOutputError, MissingInputError


def sample_path(name: str) -> Path:
    """A file of the bundled sample (W2S validation crop, see bigrestore/data/README.md)."""
    return Path(str(importlib.resources.files("bigrestore") / "data" / "sample" / name))


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bigrestore-demo"), show_default=True,
              help="Directory for everything the demo writes.")
@click.option("--samples", default=8, show_default=True, help="Samples per tile (as `run`; paper: 15).")
@click.option("--steps", default=50, show_default=True, help="Sampler steps per sample (as `run`).")
@click.option("--sampler", type=click.Choice(["ddim", "dpmpp_2m", "ancestral"]), default="ddim",
              show_default=True)
@click.option("--workers", default=1, show_default=True, help="CPU Dask workers.")
@click.option("--gpus", default=0, help="Use N GPUs instead (one worker each).")
@click.option("--overwrite", is_flag=True, help="Replace an existing demo directory.")
def command(out: Path, samples: int, steps: int, sampler: str, workers: int, gpus: int, overwrite: bool) -> None:
    """Restore the bundled real sample with the bundled model and write an HTML report.

    The sample is a 256x256 crop of a W2S validation field (widefield, single frame "avg1"
    as input, 400-frame average as ground truth). On a 2-core CPU this takes a few minutes
    with the defaults, which are those of `bigrestore run` (8 samples of 50 DDIM steps).
    """
    from tqdm import tqdm

    from bigrestore.commands.evaluate import format_table
    from bigrestore.evaluate.scoring import evaluate
    from bigrestore.io.convert import convert_tiff
    from bigrestore.run.cluster import cluster_spec, usable_cores
    from bigrestore.run.restore import restore
    from bigrestore.run.settings import bundled_model_path, run_settings

    model = bundled_model_path()
    if not (model / "model.json").exists():
        raise MissingInputError(f"{model}: bundled model missing from this installation")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CannotCreateOutputError(f"{out}: exists and is not empty; pass --overwrite or --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    where = f"{gpus} GPU(s)" if gpus else f"{workers} CPU worker(s)"
    click.echo(f"bigrestore demo: {samples} samples x {steps} {sampler} steps per tile on {where}"
               " - a few minutes on a laptop CPU")
    low, high = out / "sample_low.zarr", out / "sample_high.zarr"
    convert_tiff(sample_path("w2s_val_low.tif"), low, axes="yx")
    convert_tiff(sample_path("w2s_val_high.tif"), high, axes="yx")
    click.echo(f"1/3 converted the bundled sample to OME-Zarr: {low}, {high}")

    settings = run_settings(samples=samples, sampler=sampler, steps=None if sampler == "ancestral" else steps,
                            chunk=256, batch=16)
    bar = tqdm(total=None, unit="block", desc="2/3 restoring", dynamic_ncols=True)

    def progress(record: dict[str, Any], done: int, total: int) -> None:
        bar.total = total
        bar.update(1)

    restored = out / "restored.zarr"
    try:
        result = restore(low, restored, model=model, settings=settings,
                         cluster=cluster_spec(gpus=gpus, workers=workers, threads_per_worker=max(1, usable_cores() // workers)), progress=progress,
                         on_client=lambda client: click.echo(f"Dask dashboard: {client.dashboard_link}", err=True))
    finally:
        bar.close()
    click.echo(f"2/3 restored {result.tiles} tiles in {result.seconds:.1f} s: {restored}/mean, /std, /entropy")

    report = out / "report"
    evaluation = evaluate([restored / "mean"], high, names=["bigrestore DDPM-avg"], raw=low,
                          patch=128, report_dir=report, std=restored / "std", entropy=restored / "entropy",
                          model_dir=model)
    evaluation.write_csv(out / "metrics.csv")
    evaluation.write_json(out / "metrics.json")
    click.echo("3/3 evaluated against the 400-frame average (percentile-normalised):")
    click.echo(format_table(evaluation))
    click.echo(f"\ndone in {time.perf_counter() - started:.0f} s. Open:")
    click.echo(f"  report     {report / 'index.html'}")
    click.echo(f"  metrics    {out / 'metrics.csv'}")
    click.echo(f"  in napari  napari --plugin napari-ome-zarr {restored / 'mean'} {restored / 'std'} {low}")
