"""The files of a training directory and the run's record: output checks, model-file spec,
provenance pieces, and which config changes ``--resume`` accepts.

Layout of MODEL_DIR: ``model.safetensors``/``model.json`` (best epoch, read by
``bigrestore run``), ``checkpoint/`` (bigrestore.train.checkpoint), ``metrics.csv``, ``steps.csv``,
``tensorboard/`` (when installed).
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bigrestore.diffusion.objectives import get_objective
from bigrestore.errors import (
    BadInputError,
    CannotCreateOutputError,
    IncompatibleModelError,
    MissingInputError,
    describe,
)
from bigrestore.intensity import Stats
from bigrestore.io.paths import unwritable_directory
from bigrestore.train import checkpoint
from bigrestore.train.config import WHERE, TrainConfig
from bigrestore.train.stores import StorePair

#: Entries of an output directory that ``--overwrite`` may remove (nothing else is touched).
OUTPUT_ENTRIES = (
    "model.safetensors",
    "model.json",
    "checkpoint",
    "metrics.csv",
    "steps.csv",
    "tensorboard",
)
#: Config fields that may change when a run is resumed (they do not change the results).
RESUMABLE_CHANGES = ("workers", "time_budget_minutes", "checkpoint_minutes")


def check_output(out_dir: Path, overwrite: bool, resume: bool = False) -> None:
    """Raise CannotCreateOutputError unless training can write ``out_dir``: create it, or use
    an empty one, or (``overwrite``) clear a training directory, or (``resume``) continue one.
    Changes nothing, so ``train`` runs it before reading any data."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CannotCreateOutputError(describe(out_dir, "output", "a directory", "a file"))
    if not out_dir.exists():
        ancestor = next(p for p in out_dir.absolute().parents if p.exists())
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise CannotCreateOutputError(
                describe(
                    out_dir, "output", "a directory that can be created", f"{ancestor} not writable"
                )
            )
        return
    if not resume and any(out_dir.iterdir()):
        if not overwrite:
            raise CannotCreateOutputError(
                f"{out_dir}: output directory is not empty; pass --resume to continue its training "
                "or --overwrite to replace it"
            )
        foreign = sorted(
            p.name
            for p in out_dir.iterdir()
            if p.name not in OUTPUT_ENTRIES and not p.name.startswith(".model.")
        )
        if foreign:
            raise CannotCreateOutputError(
                describe(
                    out_dir,
                    "--overwrite",
                    "a bigrestore training directory",
                    f"other files {foreign[:3]}",
                )
            )
    blocked = unwritable_directory(out_dir)
    if blocked is None and resume:  # metrics.csv / steps.csv are rewritten in place
        blocked = next(
            (p for p in out_dir.glob("*.csv") if p.is_file() and not os.access(p, os.W_OK)), None
        )
    if blocked is not None:
        raise CannotCreateOutputError(
            describe(out_dir, "output", "a writable directory", f"{blocked} not writable")
        )


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir`` (see :func:`check_output`); a non-empty one only with ``overwrite``,
    and only if it holds nothing but training outputs (so --overwrite never deletes a user's
    other files), whose entries are then removed."""
    check_output(out_dir, overwrite)
    if out_dir.exists():
        for name in OUTPUT_ENTRIES:
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CannotCreateOutputError(
            describe(out_dir, "output", "a directory that can be created", err)
        ) from err


def data_record(
    pairs: Sequence[StorePair], val_pairs: Sequence[StorePair] | None, config: TrainConfig
) -> dict[str, Any]:
    """What was trained on (resolved paths, shapes, channels, split); --resume checks it."""

    def entry(p: StorePair) -> dict[str, Any]:
        return {
            "low": str(Path(p.low).resolve()),
            "high": str(Path(p.high).resolve()),
            "axes": p.axes,
            "shape": list(p.shape),
            "channels": [list(c) for c in p.channels],
            **({"weight": p.weight} if p.weight else {}),
        }

    return {
        "train": [entry(p) for p in pairs],
        "val": [entry(p) for p in val_pairs] if val_pairs else None,
        "split": "stores" if val_pairs else ("region" if config.val_fraction > 0 else "none"),
        "val_fraction": None if val_pairs else config.val_fraction,
        "normalisation_scope": "per plane (t, c, z), whole-plane percentiles",
    }


def resumed_config(record: dict[str, Any], given: TrainConfig | None, where: Path) -> TrainConfig:
    """The config to resume with: the checkpoint's, or ``given`` if it differs only in
    RESUMABLE_CHANGES (anything else would not continue the same run)."""
    saved = TrainConfig.from_dict(record["config"], source=where)
    if given is None:
        return saved
    a, b = saved.to_dict(), given.to_dict()
    for key in a:
        if key not in RESUMABLE_CHANGES and a[key] != b[key]:
            raise IncompatibleModelError(
                describe(where, f"--resume config {key}", a[key], b[key])
                + "; resume with the original config, or start a new run"
            )
    return given


def checkpoint_config(out_dir: str | Path) -> TrainConfig:
    """The config of the run whose checkpoint is in ``out_dir`` (for ``--resume`` without --config)."""
    ckpt_dir = Path(out_dir) / "checkpoint"
    if not checkpoint.has_state(ckpt_dir):
        raise MissingInputError(
            describe(out_dir, "--resume", "a training directory with a checkpoint", "none")
        )
    return TrainConfig.from_dict(checkpoint.read_record(ckpt_dir)["config"], source=ckpt_dir)


def hardware(device: torch.device) -> dict[str, Any]:
    """Where the run trained, for the provenance."""
    info = {
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def model_spec(config: TrainConfig, target: Stats, provenance: dict[str, Any]) -> dict[str, Any]:
    """The model-file spec (checkpoint.save_model) that ``bigrestore run`` consumes."""
    return {
        "objective": config.objective,
        "schedule": config.schedule.to_dict(),  # kept for regression too: the file format carries it
        "normalization": {
            "method": "percentile",
            "p_low": config.p_low,
            "p_high": config.p_high,
            "target_frame": config.frame,
            "target": target.to_dict(),
        },
        "provenance": provenance,
    }


def val_metric(config: TrainConfig, has_val: bool) -> str:
    """One line saying what the validation MAE measures (stored in the provenance)."""
    if not has_val:
        return "none (no validation data): the last epoch is exported"
    sampling = config.validation_sampling()
    steps = sampling.steps or config.schedule.T
    clip = ", x0 clipped" if sampling.clip_x0 else ""
    sampled = f"mean of {config.val_samples} samples ({sampling.sampler}, {steps} steps{clip})"
    what = get_objective(config.objective, WHERE, BadInputError).validation(sampled)
    return f"MAE of the {what} vs target on {config.val_patches} fixed patches, model space (p_low..p_high = -1..1)"
