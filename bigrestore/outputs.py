"""The one table of output volumes: name → statistic, units back in the input's world, dtype,
display window, and which runs write it.

``bigrestore run`` computes per-tile statistics in model space (the mean of N samples, their
std, their entropy, each sample); every output volume is one of those statistics mapped back
to the user's intensity units. The block writer, the run store, the CLI and the demo read this
table. Adding an output volume = one row here plus the statistic it names (computed in
``bigrestore.run.block``); docs/architecture.md shows an example.

Units: ``intensity`` maps model space back as a·x + b (the mean, samples), ``spread`` as a·x
(a standard deviation has no offset), ``bits`` is unitless and kept as is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bigrestore.intensity import Stats, from_model, std_from_model

Units = Literal["intensity", "spread", "bits", "flag"]


@dataclass(frozen=True)
class OutputVolume:
    """One row of the outputs table.

    ``dtype`` "run" means the run's ``--dtype`` (integer dtypes are rounded and clipped, and
    the clipped pixels counted); anything else is that numpy dtype. ``sampled_only``: written
    only by objectives that draw samples (a one-pass model has no spread). ``calibrated_only``:
    written only when the model carries a calibration for the run's sampler settings
    (bigrestore.diffusion.calibration). ``skipping_only``: written when the run skips
    background tiles (bigrestore.run.background). ``per_sample``: one
    volume per sample, named ``name/NN.zarr``, written with ``--save-samples``.
    """

    name: str
    statistic: str
    units: Units
    dtype: str
    description: str
    sampled_only: bool = False
    per_sample: bool = False
    calibrated_only: bool = False
    skipping_only: bool = False

    def to_units(self, values: np.ndarray, stats: Stats) -> np.ndarray:
        """Model-space values (one channel) → float32 in the output's units."""
        return UNIT_MAPS[self.units](values, stats)


UNIT_MAPS: dict[Units, Callable[[np.ndarray, Stats], np.ndarray]] = {
    "intensity": from_model,
    "spread": std_from_model,
    "bits": lambda values, stats: np.asarray(values, dtype=np.float32),
    "flag": lambda values, stats: (np.asarray(values) > 0).astype(np.float32),
}

OUTPUTS: tuple[OutputVolume, ...] = (
    OutputVolume(
        "mean", "mean", "intensity", "run", "the restoration: mean of N samples (DDPM-avg)"
    ),
    OutputVolume(
        "std",
        "std",
        "spread",
        "float32",
        "pixel std of the N samples (paper Eq. 15)",
        sampled_only=True,
    ),
    OutputVolume(
        "entropy",
        "entropy",
        "bits",
        "float32",
        "entropy of the samples' 8-bit values, bits (paper Eq. 16)",
        sampled_only=True,
    ),
    OutputVolume(
        "samples",
        "sample",
        "intensity",
        "run",
        "each sample, with --save-samples",
        sampled_only=True,
        per_sample=True,
    ),
    OutputVolume(
        "lower",
        "lower",
        "intensity",
        "run",
        "lower end of the calibrated interval (--coverage, default 90%)",
        sampled_only=True,
        calibrated_only=True,
    ),
    OutputVolume(
        "upper",
        "upper",
        "intensity",
        "run",
        "upper end of the calibrated interval",
        sampled_only=True,
        calibrated_only=True,
    ),
    OutputVolume(
        "std_calibrated",
        "std_calibrated",
        "spread",
        "float32",
        "pixel std scaled so that mean ± it covers 68.27 % of the calibration data, as 1 sigma",
        sampled_only=True,
        calibrated_only=True,
    ),
    OutputVolume(
        "skipped",
        "skipped",
        "flag",
        "uint8",
        "1 where a background tile was given one first estimate instead of N samples",
        sampled_only=True,
        skipping_only=True,
    ),
)
BY_NAME = {volume.name: volume for volume in OUTPUTS}


@dataclass(frozen=True)
class PlannedOutput:
    """An output a run writes: its path inside the output store, its row, and for per-sample
    volumes the sample index."""

    path: str
    volume: OutputVolume
    sample: int | None = None


def planned_outputs(
    sampled: bool,
    samples: int,
    save_samples: bool,
    calibrated: bool = False,
    skipping: bool = False,
) -> list[PlannedOutput]:
    """The outputs of a run, in writing order: every row that applies to the objective
    (``sampled``) and, with ``calibrated``, the calibrated rows; per-sample rows expand to
    ``samples/00.zarr`` ... with ``save_samples``."""
    planned = []
    for volume in OUTPUTS:
        if (volume.sampled_only and not sampled) or (volume.calibrated_only and not calibrated):
            continue
        if volume.skipping_only and not skipping:
            continue
        if volume.per_sample:
            if save_samples:
                planned += [
                    PlannedOutput(f"{volume.name}/{k:02d}.zarr", volume, k) for k in range(samples)
                ]
            continue
        planned.append(PlannedOutput(volume.name, volume))
    return planned


def cast_to(values: np.ndarray, dtype: str) -> tuple[np.ndarray, int]:
    """Cast float values to ``dtype``: integers are rounded and clipped to the dtype's range.
    Returns the array and the number of clipped pixels (0 for float32)."""
    if dtype == "float32":
        return values.astype(np.float32), 0
    info = np.iinfo(np.dtype(dtype))
    clipped = int(np.count_nonzero((values < info.min) | (values > info.max)))
    return np.clip(np.round(values), info.min, info.max).astype(dtype), clipped
