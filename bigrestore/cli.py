"""The ``bigrestore`` command line: parses and validates arguments, calls the Python API.

This is the only place where errors become exit codes (sysexits, DESIGN.md decision 8) and
where anything is printed for the user. Nothing imports this module.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from bigrestore import __version__
from bigrestore.errors import BigrestoreError


class _UserError(click.ClickException):
    """A BigrestoreError shown as one line, with its sysexits code, never as a traceback."""

    def __init__(self, error: BigrestoreError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"bigrestore: error: {self.message}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BigrestoreError as error:
            raise _UserError(error) from error


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bigrestore")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Restore large fluorescence-microscopy images (OME-Zarr) with a conditional diffusion model.

    \b
    Typical session:
      bigrestore convert stack.tif stack.zarr          # TIFF -> OME-Zarr
      bigrestore info stack.zarr                       # what is in it
      bigrestore run stack.zarr --samples 8            # restore: mean, std, entropy
      bigrestore evaluate stack.restored.zarr/mean truth.zarr --report report/

    Exit codes: 0 ok, 2 usage, 65 bad data/metadata, 66 missing input, 73 cannot create
    output, 74 I/O error, 75 interrupted (resumable), 78 incompatible model/config.
    """
    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # distributed sets its loggers to INFO when imported, and their records propagate to this
    # handler: filter at the handler so the cluster's start/stop chatter needs -v
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)


# ----------------------------------------------------------------------------- convert / info


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("destination", type=click.Path(path_type=Path))
@click.option("--axes", help="Axes of the TIFF when its metadata has none, e.g. 'zyx', 'tcyx'.")
@click.option("--pixel-size", "pixel_size", multiple=True, metavar="AXIS=SIZE",
              help="Physical pixel size in micrometers, e.g. --pixel-size x=0.1 --pixel-size y=0.1.")
@click.option("--ngff-version", type=click.Choice(["0.4", "0.5"]), default="0.5", show_default=True,
              help="0.5 writes zarr v3; 0.4 writes zarr v2 for older viewers.")
@click.option("--chunk", default=512, show_default=True, help="Chunk size in Y and X.")
@click.option("--overwrite", is_flag=True, help="Replace DESTINATION if it exists.")
def convert(source: Path, destination: Path, axes: str | None, pixel_size: tuple[str, ...],
            ngff_version: str, chunk: int, overwrite: bool) -> None:
    """Convert a TIFF / OME-TIFF (2D, 3D, time-lapse, multichannel) to multiscale OME-Zarr.

    The TIFF is read page by page, so files larger than memory convert. Axes and pixel sizes
    are taken from OME-XML or ImageJ metadata when present.

    \b
    Example:
      bigrestore convert nuclei.tif nuclei.zarr --axes zyx --pixel-size z=0.29 \\
          --pixel-size y=0.26 --pixel-size x=0.26
    """
    from bigrestore.io.convert import convert_tiff

    sizes = _parse_pixel_sizes(pixel_size)
    out = convert_tiff(source, destination, axes=axes, ngff_version=ngff_version, chunks=chunk,
                       overwrite=overwrite, pixel_size=sizes)
    click.echo(f"wrote {out}")


def _parse_pixel_sizes(items: tuple[str, ...]) -> dict[str, float]:
    sizes = {}
    for item in items:
        axis, _, value = item.partition("=")
        if axis not in ("t", "z", "y", "x") or not value:
            raise click.BadParameter(f"expected AXIS=SIZE with AXIS in t,z,y,x, found {item!r}",
                                     param_hint="--pixel-size")
        try:
            sizes[axis] = float(value)
        except ValueError as exc:
            raise click.BadParameter(f"size must be a number, found {value!r}",
                                     param_hint="--pixel-size") from exc
    return sizes


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--series", type=int, default=None, help="Image of a bioformats2raw store (default 0).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(path: Path, series: int | None, as_json: bool) -> None:
    """Describe an OME-Zarr image: axes, shape, dtype, chunks, levels, scale, channels."""
    from bigrestore.io.ome import open_image

    image = open_image(path, series=series)
    record = {
        "path": str(image.path),
        "ngff_version": image.ngff_version,
        "axes": image.meta.axes,
        "shape": list(image.data.shape),
        "dtype": str(image.data.dtype),
        "chunks": list(image.chunks),
        "levels": [list(s) for s in image.level_shapes],
        "scale": list(image.meta.scale),
        "translation": list(image.meta.translation),
        "units": list(image.meta.units),
        "channel_names": list(image.meta.channel_names or []),
    }
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    axes = image.meta.axes
    click.echo(f"{record['path']}  (OME-Zarr NGFF {record['ngff_version']})")
    click.echo(f"  axes     {axes}")
    click.echo(f"  shape    {_by_axis(axes, record['shape'])}")
    click.echo(f"  dtype    {record['dtype']}")
    click.echo(f"  chunks   {_by_axis(axes, record['chunks'])}")
    scale = [f"{s:g} {u or ''}".strip() for s, u in zip(record["scale"], record["units"], strict=True)]
    click.echo(f"  scale    {_by_axis(axes, scale)}")
    click.echo(f"  levels   {len(record['levels'])}: " + ", ".join("x".join(map(str, s)) for s in record["levels"]))
    if record["channel_names"]:
        click.echo(f"  channels {', '.join(record['channel_names'])}")


def _by_axis(axes: str, values: list[Any]) -> str:
    return "  ".join(f"{a}={v}" for a, v in zip(axes, values, strict=True))


@cli.command()
@click.argument("input_path", metavar="INPUT.zarr", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output store [default: INPUT.restored.zarr].")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Model directory (safetensors + JSON) [default: the bundled W2S model].")
@click.option("--samples", default=8, show_default=True,
              help="Samples per tile N; the mean is DDPM-avg, std/entropy their spread (paper: 15).")
@click.option("--sampler", type=click.Choice(["ddim", "dpmpp_2m", "ancestral"]), default="ddim",
              show_default=True, help="ancestral = the paper's Eq. 7 with all T steps (slow).")
@click.option("--steps", type=int, default=50, show_default=True,
              help="Network evaluations per sample for ddim/dpmpp_2m (ancestral uses T).")
@click.option("--eta", type=float, default=1.0, show_default=True,
              help="DDIM stochasticity: 1 = DDPM posterior noise (robust), 0 = deterministic.")
@click.option("--spacing", type=click.Choice(["uniform", "quadratic"]), default="uniform", show_default=True,
              help="Spacing of the ddim/dpmpp_2m steps over the T schedule steps.")
@click.option("--tile", type=int, default=None,
              help="Tile size in pixels (YX) [default: twice the model's training patch size].")
@click.option("--overlap", type=int, default=None, help="Overlap of neighbouring tiles, pixels [default: tile/4].")
@click.option("--clip/--no-clip", "clip_x0", default=True, show_default=True,
              help="Clip each predicted clean image to the model's [-1, 1] range while sampling.")
@click.option("--save-samples", is_flag=True, help="Also write every sample as OUTPUT/samples/NN.zarr.")
@click.option("--seed", default=0, show_default=True, help="Run seed: noise is keyed by (seed, position, sample).")
@click.option("--batch", default=8, show_default=True, help="Network batch size (tiles x samples) per call.")
@click.option("--gpus", type=int, default=0, help="Use N GPUs: one Dask worker per GPU.")
@click.option("--workers", type=int, default=1, show_default=True, help="CPU Dask workers (cores are shared out).")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (e.g. dask-jobqueue).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (same model and settings).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--channels", default=None, help="Comma-separated channel names or indices to restore.")
@click.option("--dtype", type=click.Choice(["float32", "uint16", "uint8"]), default="float32",
              show_default=True, help="dtype of the mean (clipped; count reported). std/entropy stay float32.")
@click.option("--output-scale", type=click.Choice(["target", "input"]), default="target", show_default=True,
              help="Map the mean back to the model's target intensities, or to the input's.")
@click.option("--chunk", default=512, show_default=True, help="Output chunk size in YX (one block = one chunk).")
@click.option("--series", type=int, default=None, help="Image of a bioformats2raw store.")
@click.option("--ngff-version", type=click.Choice(["0.4", "0.5"]), default="0.5", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Network arithmetic: auto = bf16 on GPUs and on CPUs with native bf16 (AMX), else fp32.")
def run(input_path: Path, output: Path | None, model: Path | None, samples: int, sampler: str,
        steps: int, eta: float, spacing: str, tile: int | None, overlap: int | None, seed: int, batch: int, gpus: int, workers: int,
        scheduler: str | None, resume: bool, overwrite: bool, channels: str | None, dtype: str,
        output_scale: str, chunk: int, series: int | None, ngff_version: str, device: str,
        save_samples: bool, clip_x0: bool, precision: str) -> None:
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
    from tqdm import tqdm

    from bigrestore.run.block import RestoreSettings
    from bigrestore.run.cluster import ClusterSpec
    from bigrestore.run.restore import restore

    if gpus and scheduler:
        raise click.UsageError("--gpus and --scheduler exclude each other")
    settings = RestoreSettings(samples=samples, sampler=sampler, steps=None if sampler == "ancestral" else steps,
                               eta=eta, spacing=spacing, tile=tile, overlap=overlap, seed=seed, batch=batch,
                               dtype=dtype,
                               output_scale=output_scale, chunk=chunk, save_samples=save_samples,
                               clip_x0=clip_x0, precision=precision)
    cluster = ClusterSpec(gpus=gpus, workers=gpus or workers, scheduler=scheduler)
    bars: list[Any] = []  # drawn at the first finished block, so refusals print one line only

    def on_client(client: Any) -> None:
        click.echo(f"Dask dashboard: {client.dashboard_link}", err=True)

    def progress(record: dict[str, Any], done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="block", desc="restoring", dynamic_ncols=True))
        bars[0].update(1)
        bars[0].set_postfix(tiles=record["tiles"], device=record.get("device", "?"), refresh=False)

    try:
        result = restore(input_path, output, model=model, settings=settings, cluster=cluster,
                         channels=tuple(channels.split(",")) if channels else None, series=series,
                         resume=resume, overwrite=overwrite, ngff_version=ngff_version, device=device,
                         progress=progress, on_client=on_client)
    finally:
        for bar in bars:
            bar.close()
    tiles_per_s = result.tiles / result.seconds if result.seconds else 0.0
    click.echo(f"restored {result.blocks_done_now}/{result.blocks_total} blocks, {result.tiles} tiles "
               f"in {result.seconds:.1f} s ({tiles_per_s:.2f} tiles/s)")
    if result.clipped:
        click.echo(f"note: {result.clipped} pixels of the mean were clipped to the {dtype} range")
    for name in ("mean", "std", "entropy"):
        click.echo(f"  {result.output / name}")


# --- registered commands (one line each: cli.add_command(module.command)) ---
from bigrestore.commands import demo as demo_command  # noqa: E402

cli.add_command(demo_command.command)
from bigrestore.commands import evaluate as evaluate_command  # noqa: E402

cli.add_command(evaluate_command.command)
from bigrestore.commands import register as register_command  # noqa: E402

cli.add_command(register_command.command)
from bigrestore.commands import train as train_command  # noqa: E402

cli.add_command(train_command.command)


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="bigrestore")


if __name__ == "__main__":
    sys.exit(main())
