"""``bigrestore register``: rigid ITK registration of a low-SNR store onto its high-SNR partner."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from bigrestore.errors import BadInputError, describe


@click.command("register")
@click.argument("low", type=click.Path(path_type=Path))
@click.argument("high", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Registered low image (OME-Zarr), on the high image's grid.")
@click.option("--masked-high", type=click.Path(path_type=Path), default=None,
              help="Also write HIGH with the registration padding reproduced (zeros where LOW had no data), "
                   "as in the paper's suppl. S1.1; train on OUTPUT + this.")
@click.option("--mode", type=click.Choice(["plane", "volume"]), default="plane", show_default=True,
              help="One transform per YX plane, or one per ZYX volume.")
@click.option("--reference-channel", default=0, show_default=True,
              help="Channel the transform is estimated on; applied to all channels.")
@click.option("--metric", type=click.Choice(["correlation", "mattes"]), default="correlation", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def command(low: Path, high: Path, output: Path, masked_high: Path | None, mode: str,
            reference_channel: int, metric: str, overwrite: bool) -> None:
    """Rigidly register LOW onto HIGH with ITK and print the transforms and alignment scores.

    Both images are read into memory plane by plane (or volume by volume). The score is the
    normalised cross-correlation over the valid (non-padding) pixels, before and after.

    \b
    Example:
      bigrestore register low.zarr high.zarr -o low_registered.zarr --masked-high high_masked.zarr
    """
    from bigrestore.io.images import open_image
    from bigrestore.io.paths import prepare_output
    from bigrestore.io.write import write_image
    from bigrestore.register.rigid import apply_padding_mask, register_stack

    moving_image, fixed_image = open_image(low), open_image(high)
    if moving_image.data.shape != fixed_image.data.shape:
        raise BadInputError(describe(low, "shape", f"{fixed_image.data.shape} (as {high})", moving_image.data.shape))
    if moving_image.meta.axes != fixed_image.meta.axes:
        raise BadInputError(describe(low, "axes", f"{fixed_image.meta.axes} (as {high})", moving_image.meta.axes))
    for target in (output, masked_high):
        if target is not None:
            prepare_output(target, overwrite)
    axes = fixed_image.meta.axes
    result = register_stack(
        np.asarray(moving_image.data), np.asarray(fixed_image.data), axes, mode=mode,
        reference_channel=reference_channel, spacing=fixed_image.meta.scale, metric=metric,
    )
    for index, rigid in zip(result.indices, result.results, strict=True):
        params = rigid.parameters
        angle = params.get("angle_deg", params.get("angles_deg"))
        angle = ", ".join(f"{a:+.3f}" for a in np.atleast_1d(angle))
        shift = ", ".join(f"{v:+.2f}" for v in params["translation_px"])
        click.echo(f"{index}: rotation {angle} deg, shift ({shift}) px, "
                   f"NCC {rigid.score_before:.4f} -> {rigid.score_after:.4f}")
    before = float(np.mean([r.score_before for r in result.results]))
    after = float(np.mean([r.score_after for r in result.results]))
    click.echo(f"mean alignment (NCC): before {before:.4f}, after {after:.4f}")
    registered = result.registered
    dtype = moving_image.data.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        registered = np.clip(np.round(registered), info.min, info.max).astype(dtype)
    write_image(output, registered, moving_image.meta, overwrite=overwrite)
    click.echo(f"wrote {output}")
    if masked_high is not None:
        masked = apply_padding_mask(np.asarray(fixed_image.data), result.valid_mask)
        write_image(masked_high, masked, fixed_image.meta, overwrite=overwrite)
        click.echo(f"wrote {masked_high}")
