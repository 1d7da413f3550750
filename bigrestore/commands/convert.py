"""``bigrestore convert``: TIFF, OME-TIFF, CZI, ND2 and LIF to multiscale OME-Zarr."""

from __future__ import annotations

import math
from pathlib import Path

import click


@click.command("convert")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("destination", type=click.Path(path_type=Path))
@click.option(
    "--axes",
    help="Axes of a TIFF in the order the file stores them, when its metadata has none (e.g. "
    "'zyx', 'tcyx') or names them wrongly (e.g. 'tyx' for a time-lapse saved as a z-stack). "
    "bigrestore reorders to NGFF's t, c, z, y, x itself.",
)
@click.option(
    "--scene",
    help="Scene of a multi-scene CZI / ND2 / LIF / OME-TIFF file (index or name), or series of "
    "a plain TIFF (index) [default: 0].",
)
@click.option(
    "--pixel-size",
    "pixel_size",
    multiple=True,
    metavar="AXIS=SIZE",
    help="Physical pixel size: micrometers for z, y, x, seconds for t, e.g. --pixel-size x=0.1 "
    "--pixel-size y=0.1 (replaces the file's value for that axis).",
)
@click.option(
    "--ngff-version",
    type=click.Choice(["0.4", "0.5"]),
    default="0.5",
    show_default=True,
    help="0.5 writes zarr v3; 0.4 writes zarr v2 for older viewers.",
)
@click.option("--chunk", default=512, show_default=True, help="Chunk size in Y and X.")
@click.option("--overwrite", is_flag=True, help="Replace DESTINATION if convert wrote it.")
def command(
    source: Path,
    destination: Path,
    axes: str | None,
    scene: str | None,
    pixel_size: tuple[str, ...],
    ngff_version: str,
    chunk: int,
    overwrite: bool,
) -> None:
    """Convert a microscope file (2D, 3D, time-lapse, multichannel) to multiscale OME-Zarr.

    TIFF and ImageJ TIFF are read with tifffile page by page; Zeiss CZI, Nikon ND2, Leica LIF
    and OME-TIFF through bioio plane by plane (pip install 'bigrestore[formats]'), so files
    larger than memory convert. Axes, pixel sizes and channel names come from the file's
    metadata when present.

    \b
    Examples:
      bigrestore convert nuclei.tif nuclei.zarr --axes zyx --pixel-size z=0.29 \\
          --pixel-size y=0.26 --pixel-size x=0.26
      bigrestore convert slide.czi slide.zarr --scene 1
    """
    from bigrestore.io.convert import convert_image

    if chunk < 1:
        raise click.BadParameter(
            f"expected a positive chunk size, found {chunk}", param_hint="--chunk"
        )
    sizes = parse_pixel_sizes(pixel_size)
    done = convert_image(
        source,
        destination,
        axes=axes,
        scene=scene,
        ngff_version=ngff_version,
        chunks=chunk,
        overwrite=overwrite,
        pixel_size=sizes,
    )
    if len(done.scenes) > 1:
        others = ", ".join(f"{i} ({n})" for i, n in enumerate(done.scenes) if i != done.scene)
        click.echo(
            f"scene {done.scene} ({done.scenes[done.scene]}) of {len(done.scenes)}; "
            f"the others with --scene: {others}"
        )
    click.echo(f"wrote {done.path}")


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
        if not math.isfinite(sizes[axis]) or sizes[axis] <= 0:
            raise click.BadParameter(
                f"expected a positive size for {axis}, found {value!r}", param_hint="--pixel-size"
            )
    return sizes
