"""``bigrestore register``: rigid ITK registration of a low-SNR store onto its high-SNR partner.

numpy, ITK and the image I/O are imported when the command runs, not with the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from bigrestore.commands.help import with_options
from bigrestore.errors import BadInputError, describe

if TYPE_CHECKING:
    import numpy as np

    from bigrestore.io.images import OpenedImage
    from bigrestore.register.stack import StackResult

OPTIONS = [
    click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        required=True,
        help="Registered low image (OME-Zarr), on the high image's grid.",
    ),
    click.option(
        "--masked-high",
        type=click.Path(path_type=Path),
        default=None,
        help="Also write HIGH with the registration padding reproduced (zeros where LOW had "
        "no data), as in the paper's suppl. S1.1; train on OUTPUT + this.",
    ),
    click.option(
        "--mode",
        type=click.Choice(["plane", "volume"]),
        default="plane",
        show_default=True,
        help="One transform per YX plane, or one per ZYX volume.",
    ),
    click.option(
        "--reference-channel",
        default=0,
        show_default=True,
        help="Channel the transform is estimated on; applied to all channels.",
    ),
    click.option(
        "--metric",
        type=click.Choice(["correlation", "mattes"]),
        default="correlation",
        show_default=True,
    ),
    click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
]


@click.command("register")
@click.argument("low", type=click.Path(path_type=Path))
@click.argument("high", type=click.Path(path_type=Path))
@with_options(OPTIONS)
def command(
    low: Path,
    high: Path,
    output: Path,
    masked_high: Path | None,
    mode: str,
    reference_channel: int,
    metric: str,
    overwrite: bool,
) -> None:
    """Rigidly register LOW onto HIGH with ITK and print the transforms and alignment scores.

    Both images are read into memory plane by plane (or volume by volume). The score is the
    normalised cross-correlation over the valid (non-padding) pixels, before and after.

    \b
    Example:
      bigrestore register low.zarr high.zarr -o low_registered.zarr --masked-high high_masked.zarr
    """
    import numpy as np

    from bigrestore.io.images import open_image
    from bigrestore.io.paths import prepare_output
    from bigrestore.io.write import write_image
    from bigrestore.register.stack import apply_padding_mask, register_stack

    moving_image, fixed_image = open_image(low), open_image(high)
    _check_pair(low, high, moving_image, fixed_image)
    for target in (output, masked_high):
        if target is not None:
            prepare_output(target, overwrite)
    result = register_stack(
        np.asarray(moving_image.data),
        np.asarray(fixed_image.data),
        fixed_image.meta.axes,
        mode=mode,
        reference_channel=reference_channel,
        spacing=fixed_image.meta.scale,
        metric=metric,
    )
    _echo_transforms(result)
    registered = _as_dtype(result.registered, moving_image.data.dtype)
    write_image(output, registered, moving_image.meta, overwrite=overwrite)
    click.echo(f"wrote {output}")
    if masked_high is not None:
        masked = apply_padding_mask(np.asarray(fixed_image.data), result.valid_mask)
        write_image(masked_high, masked, fixed_image.meta, overwrite=overwrite)
        click.echo(f"wrote {masked_high}")


def _check_pair(low: Path, high: Path, moving_image: OpenedImage, fixed_image: OpenedImage) -> None:
    """Refuse a LOW whose shape or axes differ from HIGH's (exit 65)."""
    moving, fixed = moving_image.data.shape, fixed_image.data.shape
    if moving != fixed:
        raise BadInputError(describe(low, "shape", f"{fixed} (as {high})", moving))
    moving_axes, fixed_axes = moving_image.meta.axes, fixed_image.meta.axes
    if moving_axes != fixed_axes:
        raise BadInputError(describe(low, "axes", f"{fixed_axes} (as {high})", moving_axes))


def _echo_transforms(result: StackResult) -> None:
    """One line per transform (rotation, shift, NCC before -> after), then the mean NCC."""
    import numpy as np

    for index, rigid in zip(result.indices, result.results, strict=True):
        params = rigid.parameters
        angle = params.get("angle_deg", params.get("angles_deg"))
        angle = ", ".join(f"{a:+.3f}" for a in np.atleast_1d(angle))
        shift = ", ".join(f"{v:+.2f}" for v in params["translation_px"])
        click.echo(
            f"{index}: rotation {angle} deg, shift ({shift}) px, "
            f"NCC {rigid.score_before:.4f} -> {rigid.score_after:.4f}"
        )
    before = float(np.mean([r.score_before for r in result.results]))
    after = float(np.mean([r.score_after for r in result.results]))
    click.echo(f"mean alignment (NCC): before {before:.4f}, after {after:.4f}")


def _as_dtype(registered: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The float32 registered stack in the input's dtype: integers rounded and clipped."""
    import numpy as np

    if not np.issubdtype(dtype, np.integer):
        return registered
    info = np.iinfo(dtype)
    return np.clip(np.round(registered), info.min, info.max).astype(dtype)
