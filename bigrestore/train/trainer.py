"""``train()``: the Python API behind ``bigrestore train``.

Flow (DESIGN.md, "Training reuses the same store reader and the same model code"):
paired OME-Zarr stores ─► lazy random patch pairs (worker pool) ─► augment ─► loss ─►
AdamW step ─► per epoch: validation MAE on fixed patches ─► best model file + checkpoint.

Everything is checked before anything is written (DESIGN.md decision 8): :func:`check_request`
(options, checkpoint, output directory), then :func:`read_data` (stores, statistics,
validation patches); only then is the output prepared and the run
(bigrestore.train.session.Session) started. The output directory holds
``model.safetensors``/``model.json`` (the best epoch, a model file that ``bigrestore run``
loads), ``checkpoint/`` (latest resumable state), ``metrics.csv`` (one row per validation) and
``steps.csv`` (one row per step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigrestore.devices import pick_device
from bigrestore.errors import IncompatibleModelError, MissingInputError, UsageError, describe
from bigrestore.train import checkpoint, directory
from bigrestore.train.config import TrainConfig
from bigrestore.train.init import adopt_model
from bigrestore.train.patches import PatchReader, fixed_patches, target_statistics
from bigrestore.train.session import Progress, Session, TrainingData
from bigrestore.train.stores import make_sources, open_pair

Pairs = Sequence[
    tuple[str | Path, str | Path] | tuple[str | Path, str | Path, float]
]  # (low, high[, weight])


@dataclass
class TrainResult:
    """What a run produced: the model directory and the validation curve (MAE in model space)."""

    out_dir: Path
    model_hash: str
    steps: int
    total_steps: int
    best_epoch: int | None
    best_val_mae: float | None
    wall_seconds: float
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def check_request(
    config: TrainConfig | None, pairs: Pairs, out_dir: Path, resume: bool, overwrite: bool
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The config to train with and, with ``resume``, the checkpoint's record; refuses
    impossible requests and unusable output directories before any data is read."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if not pairs:
        raise UsageError("give at least one --low/--high pair")
    record: dict[str, Any] | None = None
    ckpt_dir = out_dir / "checkpoint"
    if resume:
        if not checkpoint.has_state(ckpt_dir):
            raise MissingInputError(
                describe(out_dir, "--resume", "a training directory with a checkpoint", "none")
            )
        record = checkpoint.read_record(ckpt_dir)
        config = directory.resumed_config(record, config, ckpt_dir)
    if config is None:
        raise UsageError("a training config is required (--config)")
    directory.check_output(out_dir, overwrite, resume)  # before reading any data; changes nothing
    return config, record


def read_data(
    config: TrainConfig,
    pairs: Pairs,
    val_pairs: Pairs | None,
    channels: Sequence[str | int] | None,
    resumed: dict[str, Any] | None,
    ckpt_dir: Path,
) -> TrainingData:
    """Open and check the stores (the same ones as the ``resumed`` checkpoint's, if any), split
    training from validation, and read the target statistics and the validation patches."""
    train_pairs = [open_pair(pair[0], pair[1], channels, *pair[2:]) for pair in pairs]
    held_pairs = (
        [open_pair(low, high, channels) for low, high, *_ in val_pairs] if val_pairs else None
    )
    record = directory.data_record(train_pairs, held_pairs, config)
    if resumed is not None and resumed.get("data") != record:
        raise IncompatibleModelError(
            describe(ckpt_dir, "--resume data", "the stores and channels of the run", "others")
        )
    train_sources, val_sources = make_sources(
        train_pairs, held_pairs, config.patch, config.val_fraction
    )
    reader = PatchReader(config.p_low, config.p_high, target_frame=config.frame)
    data = TrainingData(
        record, train_sources, val_sources, target_statistics(train_sources, reader)
    )
    if val_sources:
        data.val_cond, data.val_target = fixed_patches(
            val_sources,
            config.val_patches,
            config.patch,
            config.seed,
            config.foreground_bias,
            reader,
        )
        data.input_mae = float(abs(data.val_cond - data.val_target).mean())
    return data


def train(
    config: TrainConfig | None,
    pairs: Pairs,
    out_dir: str | Path,
    val_pairs: Pairs | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
    channels: Sequence[str | int] | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Train a model of ``config.objective`` (bigrestore.diffusion.objectives: the conditional
    DDPM, or the regression baseline) on paired OME-Zarr stores.

    ``pairs``: (low, high) store paths; ``val_pairs``: separate validation stores (else
    ``config.val_fraction`` of each training pair is held out by region); ``channels``: names
    or indices (default all), each channel's planes are training images of a single-channel
    model. ``config`` may be None with ``resume`` (the checkpoint's config is used).
    ``init_from``: fine-tune, starting from that model's weights; its architecture, objective,
    schedule and percentiles replace the config's (bigrestore.train.init).
    ``progress(record)`` receives {"kind": "start" | "step" | "epoch", ...} records.
    Raises typed errors (bigrestore.errors); Ctrl-C gives ResumableInterrupt (exit 75).
    """
    out_dir = Path(out_dir)
    dev = pick_device(device)
    if init_from is not None and resume:
        raise UsageError("--init-from starts a new run; --resume continues one (give one)")
    config, resumed = check_request(config, pairs, out_dir, resume, overwrite)
    init = None
    if init_from is not None:
        config, init = adopt_model(config, Path(init_from))
    data = read_data(config, pairs, val_pairs, channels, resumed, out_dir / "checkpoint")
    if not resume:
        directory.prepare_output(out_dir, overwrite)
    session = Session(config, data, out_dir, dev, resume, progress, init)
    session.run()
    model_hash = session.export_best()
    run = session.run_state
    return TrainResult(
        out_dir=out_dir,
        model_hash=model_hash,
        steps=run.step,
        total_steps=config.total_steps,
        best_epoch=run.best_epoch,
        best_val_mae=run.best_val_mae,
        wall_seconds=run.wall_seconds,
        stopped_early=session.stopped_early,
        history=list(run.history),
    )
