"""The restoration's intensity scale: model space mapped back to the input's units, faithfully.

The network works in model space (each plane's 1st / 99.8th percentiles at -1 / +1). Mapping
the restored mean back with the *noisy input's* percentiles makes it too bright: noise widens
the input's percentile range (measured: +19% mean brightness on a 16-bit stack). Instead the
map is fitted: the raw input is an unbiased, noisy measurement of the clean signal (zero-mean
shot and read noise around it), so regressing the input on the restored mean by least squares,

    input_model ≈ a · mean_model + b      (per channel, over a few restored tiles)

in model space (each tile's input normalised with its own plane's levels) gives the a, b that,
folded into each plane's levels, put the restoration in the input's units with its brightness
preserved.
The tiles are chosen deterministically (the most structured of a spread sample) and restored
cheaply: one first estimate each where the model has one (the conditional mean), else the
mean of 2 samples; the fit averages over tens of thousands of pixels, so this costs a few
network calls, not a share of the run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from bigrestore.intensity import after_fit, fit_line, measured

if TYPE_CHECKING:
    import torch

    from bigrestore.run.plan import RunPlan

#: Tiles looked at, and restored, for the fit.
CANDIDATES = 48
FIT_TILES = 4


def fit_tiles(
    plan: RunPlan, candidates: int = CANDIDATES, chosen: int = FIT_TILES
) -> list[tuple[int, tuple[int, int]]]:
    """(task index, tile origin) of the tiles to restore: ``candidates`` spread evenly over the
    planes and positions of the plan, of which the ``chosen`` with the largest input variance."""
    from bigrestore.run.tiles import normalise, read_tiles_region

    grid = plan.job.grid
    pool = [
        (i, o) for i, task in enumerate(plan.tasks) for o in grid.tiles_owned(*task.block.region)
    ]
    step = max(1, len(pool) // candidates)
    spread = pool[::step][:candidates]
    scored = []
    for index, origin in spread:
        task = plan.tasks[index]
        region, _, _ = read_tiles_region(plan.job, task, grid, [origin])
        scored.append((float(np.var(normalise(region, plan.job, task))), index, origin))
    scored.sort(key=lambda item: (-item[0], item[1], item[2]))
    return [(index, origin) for _, index, origin in scored[:chosen]]


def cheap_mean(
    plan: RunPlan,
    task: Any,
    origin: tuple[int, int],
    region_model: np.ndarray,
    region_origin: tuple[int, int],
    net: torch.nn.Module,
    device: torch.device,
) -> np.ndarray:
    """A restored mean of one tile, (C, t, t) model space, good enough for the fit and cheap:
    the model's one-call first estimate where it has one (the conditional mean), else the mean
    of 2 samples with the run's sampler (the fit averages the rest of the noise out).
    ``region_model``: the tile's region as the caller read and normalised it, starting at
    ``region_origin`` (y, x), so the first estimate does not read it again."""
    import torch

    from bigrestore.devices import autocast_dtype
    from bigrestore.run.tiles import compute_tiles, cut, first_estimates

    job = plan.job
    if plan.model.objective.first_estimate:
        tiles = cut(region_model, job.grid, *region_origin, [origin])
        autocast = autocast_dtype(job.settings.precision, device)
        with torch.inference_mode():
            return first_estimates(net, tiles, [origin], job, task, autocast, device)[0]
    light = replace(
        job,
        settings=job.settings.model_copy(update={"samples": 2, "save_samples": False}),
        background=None,
    )
    return compute_tiles(light, task, [origin], net, device).maps["mean"][0]


def fit_output_scale(
    plan: RunPlan, net: torch.nn.Module, device: torch.device
) -> tuple[RunPlan, dict]:
    """``plan`` with its output statistics corrected by the least-squares fit of the input on
    the restored mean (per output channel, in model space, where every plane's input has the
    same scale), and a record of the fit for the manifest (:func:`with_fit` applies it)."""
    from bigrestore.run.tiles import normalise, read_tiles_region

    grid = plan.job.grid
    pairs: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    tiles = fit_tiles(plan)
    for index, origin in tiles:
        task = plan.tasks[index]
        region, ry0, rx0 = read_tiles_region(plan.job, task, grid, [origin])
        h, w = region.shape[-2:]  # the tile starts inside the image: its region starts at the tile
        raw_model = normalise(region, plan.job, task)
        restored = cheap_mean(plan, task, origin, raw_model, (ry0, rx0), net, device)[..., :h, :w]
        stats = plan.job.plane_values(plan.job.input_stats, task)
        for i, out_channel in enumerate(task.out_channels):
            # saturated and fill pixels say nothing of the scale
            keep = measured(region[i], stats[task.channels[i]]).ravel()
            raw, model = pairs.setdefault(out_channel, ([], []))
            raw.append(raw_model[i].astype(np.float64).ravel()[keep])
            model.append(restored[i].astype(np.float64).ravel()[keep])
    record: dict[str, Any] = {
        "method": "least-squares fit of the input on the restored mean, in model space"
        + (" (first estimates)" if plan.model.objective.first_estimate else " (2 samples)"),
        "space": "model",
        "tiles": len(tiles),
        "channels": [],
    }
    for channel, (raw, model) in sorted(pairs.items()):
        a, b = fit_line(np.concatenate(model), np.concatenate(raw))
        used = bool(np.isfinite(a) and a > 0)
        record["channels"].append({"channel": channel, "a": float(a), "b": float(b), "used": used})
    return with_fit(plan, record), record


def with_fit(plan: RunPlan, record: dict[str, Any]) -> RunPlan:
    """``plan`` whose output statistics are its input's, per plane, corrected by a model-space
    fit ``record`` (of :func:`fit_output_scale`; channels whose fit is not used keep the
    input's levels)."""
    fits = {entry["channel"]: entry for entry in record["channels"] if entry["used"]}
    stats = tuple(
        tuple(
            after_fit(plane[c], fits[o]["a"], fits[o]["b"]) if o in fits else plane[c]
            for o, c in enumerate(plan.channels)
        )
        for plane in plan.job.input_stats
    )
    return replace(plan, job=replace(plan.job, output_stats=stats))
