"""``bigrestore run``: parse options into RunSettings and a ClusterSpec, call
:func:`bigrestore.run.restore.restore`, draw the progress bar and print where the outputs are."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from bigrestore.commands.help import SectionedCommand, with_options
from bigrestore.commands.run_options import OPTIONS, settings_from_options

#: RunSettings fields given by the options of the same name.
SETTINGS = (
    "samples", "sampler", "steps", "eta", "spacing", "clip_x0", "antithetic", "flips", "clip_bound",
    "tile", "overlap", "seed", "batch", "dtype", "output_scale", "chunk", "save_samples",
    "precision", "coverage", "skip_background", "background", "shared_noise", "normalise_per",
)  # fmt: skip


@click.command("run", cls=SectionedCommand)
@click.argument("input_path", metavar="INPUT.zarr", type=click.Path(path_type=Path))
@with_options(OPTIONS)
def command(input_path: Path, **opts: Any) -> None:
    """Restore an OME-Zarr image tile by tile on a Dask cluster.

    Writes OUTPUT/mean, OUTPUT/std and OUTPUT/entropy, each a multiscale OME-Zarr image with the
    input's axes and pixel size (with a calibrated model also std_calibrated, lower and upper;
    OUTPUT/skipped marks background tiles that got one estimate; docs/output-layout.md). Every tile is sampled N times with noise keyed by its position,
    so the result does not depend on the number of workers. Interrupted runs continue with
    --resume.

    \b
    Examples:
      bigrestore run stack.zarr --samples 4                    # quicker, rougher
      bigrestore run slide.zarr --gpus 4 --samples 15           # one worker per GPU
      bigrestore run slide.zarr --scheduler tcp://10.0.0.5:8786 # existing cluster
    """
    from bigrestore.run.cluster import cluster_spec
    from bigrestore.run.restore import restore

    settings = settings_from_options(opts, SETTINGS)
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
    for section in ("sampling", "entropy", "saturation", "fill", "rounding"):
        warning = result.manifest.get(section, {}).get("warning")
        if warning:
            click.echo(f"note: {warning}", err=True)
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
