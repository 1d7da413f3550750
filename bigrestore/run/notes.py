"""What a run's manifest says about its optional outputs: whether background tiles were
skipped, whether a calibration made the interval outputs, and how informative the entropy is
(each with the reason when not)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bigrestore.run.plan import RunPlan


def entropy_note(plan: RunPlan, totals: dict[str, Any]) -> dict[str, Any]:
    """How informative the entropy output is: the share of pixels where it saturated at
    log2(N) bits (all N samples on different 8-bit levels), where it says nothing."""
    n = plan.settings.samples
    share = totals["entropy_saturated"] / totals["pixels"] if totals["pixels"] else None
    note: dict[str, Any] = {"max_bits": round(float(np.log2(n)), 3), "saturated_fraction": share}
    if n == 1:
        note["warning"] = (
            "with one sample per tile, std and entropy are 0 everywhere: draw --samples 2 or more"
        )
    elif share is not None and (n < 8 or share > 0.5):
        saturated = (
            f" and is saturated on {share:.0%} of pixels (all samples on different 8-bit levels)"
            if share >= 0.005
            else ""
        )
        note["warning"] = (
            f"with N = {n} samples the entropy takes at most {np.log2(n):g} bits{saturated}: "
            "use std (or std_calibrated) as the uncertainty, or more samples (docs/uncertainty.md)"
        )
    return note


#: An integer mean whose levels span fewer output units than this loses detail to rounding
#: (its rounding error, 0.29 units rms, is then over 0.45 % of the range: under ~47 dB).
ROUNDING_RANGE = 64.0


def rounding_note(plan: RunPlan) -> dict[str, Any]:
    """A warning when the mean is stored as integers (the input's dtype, by default) but some
    plane spans only a few units: rounding to whole units then costs visible detail (a dim
    16-bit channel spanning 6 units lost 3 dB against float32), which --dtype float32 keeps."""
    dtype = plan.settings.dtype
    if dtype == "float32":
        return {}
    if plan.settings.output_scale != "input":  # the model's target levels: not the data's
        return {}
    # a flat plane's levels are given a unit span (bigrestore.intensity): no detail to lose
    spans = [
        plane[o].high - plane[o].low
        for plane, given in zip(plan.job.output_stats, plan.job.input_stats, strict=True)
        for o, c in enumerate(plan.channels)
        if given[c].high - given[c].low != 1.0
    ]
    narrowest = min(spans, default=ROUNDING_RANGE)
    if narrowest >= ROUNDING_RANGE:
        return {}
    return {
        "narrowest_range": round(float(narrowest), 3),
        "warning": f"the mean is stored as {dtype} but some planes span only {narrowest:.1f} units "
        "between their 1st and 99.8th percentiles: rounding to whole units loses detail there; "
        "--dtype float32 keeps it",
    }


def plateau_levels(plan: RunPlan, kind: str) -> dict[str, list[float]]:
    """Per input channel with a plateau of ``kind`` ("saturated" or "filled"), its level in each
    plane that has one (plane order; bigrestore.intensity.percentile_stats)."""
    levels = {
        str(c): [
            getattr(plane[c], kind)
            for plane in plan.job.input_stats
            if getattr(plane[c], kind) is not None
        ]
        for c in plan.channels
    }
    return {c: found for c, found in levels.items() if found}


def _plateau_note(plan: RunPlan, kind: str, pixels: int, warning: str) -> dict[str, Any]:
    """Per channel with a plateau of ``kind``: its level (the highest saturation, the lowest
    fill) and in how many planes, this run's pixels at it, and, when there is one, ``warning``
    with ``{where}`` (the channels in words) and ``{pixels}`` filled in."""
    planes = len(plan.job.input_stats)
    pick = max if kind == "saturated" else min
    channels = {
        c: {"level": pick(found), "planes": len(found), "of_planes": planes}
        for c, found in plateau_levels(plan, kind).items()
    }
    note: dict[str, Any] = {"channels": channels, "pixels_this_run": pixels}
    if channels:
        where = "; ".join(
            f"channel {c} at {v['level']:g} in {v['planes']} of {v['of_planes']} plane(s)"
            for c, v in channels.items()
        )
        note["warning"] = warning.format(where=where, pixels=pixels)
    return note


def saturation_note(plan: RunPlan, totals: dict[str, Any]) -> dict[str, Any]:
    """Which input channels have a saturation plateau (its level, in how many planes) and how
    many of this run's pixels reached it: those pixels are left out of the intensity levels and
    keep the saturation level in the mean (bigrestore.intensity.percentile_stats)."""
    return _plateau_note(
        plan,
        "saturated",
        totals["saturated_input"],
        "the input is saturated ({where}; {pixels} pixels this run): saturated pixels were left "
        "out of the intensity levels and keep their saturation level in the mean (with "
        "--output-scale input, the default); their std and entropy describe a guess, not a "
        "measurement",
    )


def fill_note(plan: RunPlan, totals: dict[str, Any]) -> dict[str, Any]:
    """Which input channels have a fill plateau far below the image (the unacquired corners of a
    stitched slide, a masked region; its level, in how many planes) and how many of this run's
    pixels hold it: they are left out of the intensity levels and keep the fill value in the
    mean (bigrestore.intensity.percentile_stats)."""
    return _plateau_note(
        plan,
        "filled",
        totals["fill_input"],
        "the input has a fill value far below the image ({where}; {pixels} pixels this run), as "
        "around a stitched slide's tiles: those pixels were read as holding no measurement, left "
        "out of the intensity levels and keep the fill value in the mean (with --output-scale "
        "input, the default)",
    )


def background_note(plan: RunPlan) -> dict[str, Any]:
    """Whether background tiles were skipped, with which thresholds (model space), or why not."""
    if plan.job.background is not None:
        per_plane = plan.job.background
        thresholds = {
            str(c): per_plane[0][c] if len(per_plane) == 1 else [plane[c] for plane in per_plane]
            for c in plan.channels
        }
        return {
            "skipping": True,
            "thresholds_model_space": thresholds,
            "how": "tiles whose smoothed input stays below the threshold get one first estimate "
            "(std 0; see OUTPUT/skipped)",
        }
    if plan.settings.skip_background == "off":
        return {"skipping": False, "why": "--skip-background off"}
    return {
        "skipping": False,
        "why": f"the model's objective ({plan.model.objective.name}) has no one-call "
        "clean-image estimate",
    }


def calibration_note(plan: RunPlan) -> dict[str, Any]:
    """What the manifest says about the calibrated outputs: which calibration made them, or
    why there are none."""
    found = plan.job.calibration
    if found is not None:
        return {
            "applied": True,
            "coverage": plan.settings.coverage,
            "data": found["data"],
            "regions": found["regions"],
            "key": found["key"],
        }
    if not plan.model.objective.sampled:
        return {"applied": False, "why": "a one-pass model has no spread to calibrate"}
    stored = [entry.get("key") for entry in plan.model.calibrations]
    return {
        "applied": False,
        "why": "the model has no calibration for these settings "
        f"({plan.settings.calibration_key()}); it has {len(stored)} for others. "
        "Make one with: bigrestore calibrate MODEL --low L.zarr --high H.zarr (same sampler options)",
    }


#: Fewer DDIM steps than this with a noise-predicting (eps) model draws a warning.
EPS_MIN_STEPS = 25


def sampling_note(plan: RunPlan) -> dict[str, Any]:
    """A warning when the sampler takes few steps with a model that cannot: an eps-model's
    first clean-image estimates divide its error by sqrt(alpha_bar_T) ~ 2.5e-4, so it needs
    about 50 DDIM steps (docs/benchmarks.md, few evaluations), unless it was trained on
    exactly the timesteps it is sampled on (Fast-DDPM)."""
    objective, sampling = plan.model.objective, plan.settings.sampling
    trained_on = plan.model.provenance.get("config", {}).get("train_timesteps")
    few = sampling.steps is not None and sampling.steps < EPS_MIN_STEPS
    if not objective.sampled or objective.first_estimate or not few or trained_on == sampling.steps:
        return {}
    return {
        "warning": f"this model predicts the noise (objective {objective.name}); with "
        f"{sampling.steps} steps its samples are poor: use --steps 50 (or a v-model, whose "
        "default is 8 steps; docs/benchmarks.md)"
    }
