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
        note["warning"] = (
            f"with N = {n} samples the entropy takes at most {np.log2(n):g} bits and is saturated on {share:.0%} "
            "of pixels (all samples on different 8-bit levels): use std (or std_calibrated) as the "
            "uncertainty, or more samples (docs/uncertainty.md)"
        )
    return note


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
