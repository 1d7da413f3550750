"""``bigrestore convert``: TIFF / OME-TIFF to multiscale OME-Zarr."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("convert")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("destination", type=click.Path(path_type=Path))
@click.option("--axes", help="Axes of the TIFF when its metadata has none, e.g. 'zyx', 'tcyx'.")
@click.option(
    "--pixel-size",
    "pixel_size",
    multiple=True,
    metavar="AXIS=SIZE",
    help="Physical pixel size in micrometers, e.g. --pixel-size x=0.1 --pixel-size y=0.1.",
)
@click.option(
    "--ngff-version",
    type=click.Choice(["0.4", "0.5"]),
    default="0.5",
    show_default=True,
    help="0.5 writes zarr v3; 0.4 writes zarr v2 for older viewers.",
)
@click.option("--chunk", default=512, show_default=True, help="Chunk size in Y and X.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace DESTINATION if it exists (only a store bigrestore wrote).",
)
def command(
    source: Path,
    destination: Path,
    axes: str | None,
    pixel_size: tuple[str, ...],
    ngff_version: str,
    chunk: int,
    overwrite: bool,
) -> None:
    """Convert a TIFF / OME-TIFF (2D, 3D, time-lapse, multichannel) to multiscale OME-Zarr.

    The TIFF is read page by page, so files larger than memory convert. Axes and pixel sizes
    are taken from OME-XML or ImageJ metadata when present.

    \b
    Example:
      bigrestore convert nuclei.tif nuclei.zarr --axes zyx --pixel-size z=0.29 \\
          --pixel-size y=0.26 --pixel-size x=0.26
    """
    from bigrestore.io.convert import convert_tiff

    if chunk < 1:
        raise click.BadParameter(
            f"expected a positive chunk size, found {chunk}", param_hint="--chunk"
        )
    sizes = parse_pixel_sizes(pixel_size)
    out = convert_tiff(
        source,
        destination,
        axes=axes,
        ngff_version=ngff_version,
        chunks=chunk,
        overwrite=overwrite,
        pixel_size=sizes,
    )
    click.echo(f"wrote {out}")


def parse_pixel_sizes(items: tuple[str, ...]) -> dict[str, float]:
    """``AXIS=SIZE`` items → {axis: size}; click errors name the bad item."""
    sizes = {}
    for item in items:
        axis, _, value = item.partition("=")
        if axis not in ("t", "z", "y", "x") or not value:
            raise click.BadParameter(
                f"expected AXIS=SIZE with AXIS in t,z,y,x, found {item!r}",
                param_hint="--pixel-size",
            )
        try:
            sizes[axis] = float(value)
        except ValueError as exc:
            raise click.BadParameter(
                f"size must be a number, found {value!r}", param_hint="--pixel-size"
            ) from exc
    return sizes
