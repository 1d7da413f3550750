"""``bigrestore run``: parse options into RunSettings and a ClusterSpec, call
:func:`bigrestore.run.restore.restore`, draw the progress bar and print where the outputs are."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from bigrestore.commands.help import SectionedCommand, option, with_options

IO = "Input and output"
SAMPLING = "Sampling"
CLUSTER = "Where it runs"
ADVANCED = "Advanced"


def _sampler_choices() -> list[str]:
    from bigrestore.diffusion.samplers import SAMPLERS

    return list(SAMPLERS)


OPTIONS = [
    option(
        "-o",
        "--output",
        section=IO,
        type=click.Path(path_type=Path),
        default=None,
        help="Output store [default: INPUT.restored.zarr].",
    ),
    option(
        "--model",
        section=IO,
        type=click.Path(path_type=Path),
        default=None,
        help="Model directory (safetensors + JSON) [default: the bundled W2S model].",
    ),
    option(
        "--channels",
        section=IO,
        default=None,
        help="Comma-separated channel names or indices to restore.",
    ),
    option(
        "--resume",
        section=IO,
        is_flag=True,
        help="Continue an interrupted run (same model and settings).",
    ),
    option(
        "--allow-missing-chunks",
        section=IO,
        is_flag=True,
        help="Accept an input whose level 0 lacks chunks (read as zeros); refused by default.",
    ),
    option(
        "--overwrite",
        section=IO,
        is_flag=True,
        help="Replace an existing output (only one bigrestore wrote).",
    ),
    option(
        "--dtype",
        section=IO,
        type=click.Choice(["auto", "float32", "uint16", "uint8"]),
        default="auto",
        show_default=True,
        help="dtype of the mean: auto = the input's (uint8/uint16), else float32. Clipped pixels are "
        "counted and reported. std/entropy stay float32.",
    ),
    option(
        "--output-scale",
        section=IO,
        type=click.Choice(["input", "target"]),
        default="input",
        show_default=True,
        help="input: the input's intensity units, brightness preserved (a fit on a few restored tiles); "
        "target: the model's training target levels.",
    ),
    option(
        "--samples",
        section=SAMPLING,
        default=8,
        show_default=True,
        help="Samples per tile N; the mean is DDPM-avg, std/entropy their spread (paper: 15).",
    ),
    option(
        "--sampler",
        section=SAMPLING,
        type=click.Choice(_sampler_choices()),
        default="ddim",
        show_default=True,
        help="ancestral = the paper's Eq. 7 with all T steps (slow).",
    ),
    option(
        "--steps",
        section=SAMPLING,
        type=int,
        default=50,
        show_default=True,
        help="Network evaluations per sample (ancestral uses T).",
    ),
    option(
        "--eta",
        section=SAMPLING,
        type=float,
        default=1.0,
        show_default=True,
        help="DDIM stochasticity: 1 = DDPM posterior noise (robust), 0 = deterministic.",
    ),
    option(
        "--coverage",
        section=SAMPLING,
        type=click.Choice(["0.8", "0.9", "0.95"]),
        default="0.9",
        show_default=True,
        help="Level of the calibrated interval OUTPUT/lower, OUTPUT/upper (written when the model carries a "
        "calibration for these settings: bigrestore calibrate).",
    ),
    option(
        "--seed",
        section=SAMPLING,
        default=0,
        show_default=True,
        help="Run seed: noise is keyed by (seed, position, sample).",
    ),
    option(
        "--workers",
        section=CLUSTER,
        type=int,
        default=None,
        help="CPU Dask workers [default: one per usable core].",
    ),
    option(
        "--threads-per-worker",
        section=CLUSTER,
        type=int,
        default=1,
        show_default=True,
        help="torch threads in each worker; the output's bytes depend on it (recorded, kept by --resume).",
    ),
    option(
        "--gpus", section=CLUSTER, type=int, default=0, help="Use N GPUs: one Dask worker per GPU."
    ),
    option(
        "--scheduler",
        section=CLUSTER,
        default=None,
        help="Address of an existing Dask scheduler (e.g. from dask-jobqueue).",
    ),
    option(
        "--device",
        section=CLUSTER,
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
    ),
    option(
        "--precision",
        section=CLUSTER,
        type=click.Choice(["auto", "fp32", "bf16"]),
        default="auto",
        show_default=True,
        help="Network arithmetic: auto = bf16 on GPUs and on CPUs with native bf16, else fp32.",
    ),
    option(
        "--spacing",
        section=ADVANCED,
        type=click.Choice(["uniform", "quadratic"]),
        default="uniform",
        show_default=True,
        help="Spacing of the sampler's steps over the T schedule steps.",
    ),
    option(
        "--clip/--no-clip",
        "clip_x0",
        section=ADVANCED,
        default=True,
        show_default=True,
        help="Clip each predicted clean image to the model's [-1, 1] range while sampling.",
    ),
    option(
        "--clip-bound",
        section=ADVANCED,
        type=float,
        default=1.0,
        show_default=True,
        help="With --clip: the bound in model space (each image's 1st/99.8th percentiles are -1/+1).",
    ),
    option(
        "--tile",
        section=ADVANCED,
        type=int,
        default=None,
        help="Tile size in pixels (YX) [default: twice the model's training patch size].",
    ),
    option(
        "--overlap",
        section=ADVANCED,
        type=int,
        default=None,
        help="Overlap of neighbouring tiles, pixels [default: tile/4].",
    ),
    option(
        "--batch",
        section=ADVANCED,
        type=int,
        default=None,
        help="Network batch (tiles x samples per call) [default: 8 on CPUs; on a GPU the largest that fits, "
        "measured once per worker].",
    ),
    option(
        "--chunk",
        section=ADVANCED,
        default=512,
        show_default=True,
        help="Output chunk size in YX (one block = one chunk).",
    ),
    option(
        "--save-samples",
        section=ADVANCED,
        is_flag=True,
        help="Also write every sample as OUTPUT/samples/NN.zarr.",
    ),
    option(
        "--series",
        section=ADVANCED,
        type=int,
        default=None,
        help="Image of a bioformats2raw store.",
    ),
    option(
        "--ngff-version",
        section=ADVANCED,
        type=click.Choice(["0.4", "0.5"]),
        default=None,
        help="0.5 (zarr v3, default) or 0.4 (zarr v2); --resume keeps the store's.",
    ),
]


@click.command("run", cls=SectionedCommand)
@click.argument("input_path", metavar="INPUT.zarr", type=click.Path(path_type=Path))
@with_options(OPTIONS)
def command(input_path: Path, **opts: Any) -> None:
    """Restore an OME-Zarr image tile by tile on a Dask cluster.

    Writes OUTPUT/mean, OUTPUT/std and OUTPUT/entropy, each a multiscale OME-Zarr image with the
    input's axes and pixel size. Every tile is sampled N times with noise keyed by its position,
    so the result does not depend on the number of workers. Interrupted runs continue with
    --resume.

    \b
    Examples:
      bigrestore run stack.zarr --samples 4 --steps 20          # quicker, rougher
      bigrestore run slide.zarr --gpus 4 --samples 15           # one worker per GPU
      bigrestore run slide.zarr --scheduler tcp://10.0.0.5:8786 # existing cluster
    """
    from bigrestore.run.cluster import cluster_spec
    from bigrestore.run.restore import restore
    from bigrestore.run.settings import run_settings

    sampler = opts["sampler"]
    settings = run_settings(
        samples=opts["samples"],
        sampler=sampler,
        steps=None if sampler == "ancestral" else opts["steps"],
        eta=opts["eta"],
        spacing=opts["spacing"],
        clip_x0=opts["clip_x0"],
        clip_bound=opts["clip_bound"],
        tile=opts["tile"],
        overlap=opts["overlap"],
        seed=opts["seed"],
        batch=opts["batch"],
        dtype=opts["dtype"],
        output_scale=opts["output_scale"],
        chunk=opts["chunk"],
        save_samples=opts["save_samples"],
        precision=opts["precision"],
        coverage=float(opts["coverage"]),
    )
    cluster = cluster_spec(
        gpus=opts["gpus"],
        workers=opts["workers"],
        scheduler=opts["scheduler"],
        threads_per_worker=opts["threads_per_worker"],
    )
    channels = tuple(opts["channels"].split(",")) if opts["channels"] else None
    bar = ProgressBar()
    try:
        with interrupt_on_sigterm():
            result = restore(
                input_path,
                opts["output"],
                model=opts["model"],
                settings=settings,
                cluster=cluster,
                channels=channels,
                series=opts["series"],
                resume=opts["resume"],
                overwrite=opts["overwrite"],
                ngff_version=opts["ngff_version"],
                device=opts["device"],
                allow_missing_chunks=opts["allow_missing_chunks"],
                progress=bar.block,
                tile_progress=bar.tiles,
                on_client=dashboard_line,
            )
    finally:
        bar.close()
    report(result, opts["dtype"])


def report(result: Any, dtype: str) -> None:
    """What was done and where the outputs are."""
    tiles_per_s = result.tiles / result.seconds if result.seconds else 0.0
    click.echo(
        f"restored {result.blocks_done_now}/{result.blocks_total} blocks, {result.tiles} tiles "
        f"in {result.seconds:.1f} s ({tiles_per_s:.2f} tiles/s)"
    )
    if result.clipped:
        click.echo(f"note: {result.clipped} pixels of the mean were clipped to the {dtype} range")
    for name in result.manifest.get("outputs", []):
        click.echo(f"  {result.output / name}")


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Treat SIGTERM (what SLURM and most schedulers send at a time limit) like Ctrl-C: the
    run stops, keeps its finished blocks and exits 75 with the command that resumes it."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def dashboard_line(client: Any) -> None:
    """Print where the Dask dashboard is, on its own line (stderr)."""
    click.echo(f"Dask dashboard: {client.dashboard_link}", err=True)


class ProgressBar:
    """A tqdm bar over tiles (so the ETA comes from the first tiles, not the first whole
    block), with the blocks written as its postfix; drawn at the first finished tiles, so
    refusals print one line only."""

    def __init__(self, desc: str = "restoring") -> None:
        self.desc = desc
        self.bar: Any = None
        self.blocks = ""

    def tiles(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="tile", desc=self.desc, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(self.blocks, refresh=False)

    def block(self, record: dict[str, Any], done: int, total: int) -> None:
        self.blocks = f"{done}/{total} blocks written"
        if self.bar is not None:
            self.bar.set_postfix_str(self.blocks)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
