"""``calibrate()``: restore held-out pairs with a run's exact settings, measure how the pixel
std relates to the actual error, and store the resulting interval factors in the model file
(bigrestore.diffusion.calibration; docs/uncertainty.md says what they mean)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bigrestore.diffusion.calibration import Calibration, fit_calibration
from bigrestore.errors import BadInputError, describe
from bigrestore.io.images import open_image
from bigrestore.run.cluster import ClusterSpec
from bigrestore.run.restore import restore
from bigrestore.run.settings import RunSettings

Pair = tuple[str | Path, str | Path]


def planes(path: Path) -> list[np.ndarray]:
    """Every (t, c, z) plane of an OME-Zarr image's level 0, as 2D float64 arrays."""
    image = open_image(path)
    data = np.asarray(image.data.compute(), dtype=np.float64)
    return list(data.reshape((-1, *data.shape[-2:])))


def restored_planes(
    pair: Pair,
    model: Path,
    settings: RunSettings,
    cluster: ClusterSpec,
    work: Path,
    progress: Callable[[dict[str, Any], int, int], None] | None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(mean, std, truth) of every plane of one held-out pair, restored by ``run``'s own path."""
    low, high = Path(pair[0]), Path(pair[1])
    out = work / f"{low.name}.calibration.zarr"
    result = restore(
        low,
        out,
        model=model,
        settings=settings,
        cluster=cluster,
        overwrite=out.exists(),
        progress=progress,
    )
    if "std" not in result.manifest.get("outputs", []):
        raise BadInputError(
            describe(
                model, "objective", "a sampled objective (it has a spread)", "a one-pass model"
            )
        )
    means, stds, truths = planes(out / "mean"), planes(out / "std"), planes(high)
    if len(truths) != len(means) or truths[0].shape != means[0].shape:
        raise BadInputError(
            describe(f"{low} vs {high}", "shape", "the same planes and size", "others")
        )
    return list(zip(means, stds, truths, strict=True))


def calibrate(
    model: Path,
    pairs: Sequence[Pair],
    settings: RunSettings,
    cluster: ClusterSpec | None = None,
    work: Path | None = None,
    data: str = "",
    progress: Callable[[dict[str, Any], int, int], None] | None = None,
) -> Calibration:
    """Restore ``pairs`` (low, high OME-Zarr stores of held-out fields) with ``settings`` and fit
    the calibration for exactly those settings (key: sampler settings, samples, tile)."""
    from bigrestore.model.files import read_model

    info = read_model(model)
    resolved = settings.resolved(info.unet.train_resolution)
    settings = settings.changed(output_scale="target", dtype="float32")  # z is scale-free
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        images = []
        for pair in pairs:
            images += restored_planes(
                pair, model, settings, cluster or ClusterSpec(), Path(tmp), progress
            )
    description = data or ", ".join(str(Path(low).name) for low, _ in pairs)
    return fit_calibration(
        images, resolved.calibration_key(), f"{len(images)} planes of {description}"
    )
