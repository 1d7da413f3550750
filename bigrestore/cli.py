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
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


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


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="bigrestore")


if __name__ == "__main__":
    sys.exit(main())
