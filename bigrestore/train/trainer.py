"""``train()``: the Python API behind ``bigrestore train``.

Flow (DESIGN.md, "Training reuses the same store reader and the same model code"):
paired OME-Zarr stores ─► lazy random patch pairs (worker pool) ─► augment ─► loss ─►
AdamW step ─► per epoch: validation MAE on fixed patches ─► best model file + checkpoint.

Everything is checked before anything is written (DESIGN.md decision 8). The output
directory holds ``model.safetensors``/``model.json`` (the best epoch, a model file that
``bigrestore run`` loads), ``checkpoint/`` (latest resumable state), ``metrics.csv`` (one row
per validation) and ``steps.csv`` (one row per step).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bigrestore import __version__
from bigrestore.devices import pick_device
from bigrestore.errors import (
    IncompatibleModelError,
    MissingInputError,
    ResumableInterrupt,
    UsageError,
    describe,
)
from bigrestore.model.files import load_model, save_model
from bigrestore.model.unet import ConditionalUNet
from bigrestore.train import checkpoint, directory, loop
from bigrestore.train.config import TrainConfig
from bigrestore.train.patches import PatchBatches, PatchReader, fixed_patches, target_statistics
from bigrestore.train.stores import make_sources, open_pair

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


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


@dataclass
class _RunState:
    step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    best_epoch: int | None = None
    best_step: int | None = None
    best_val_mae: float | None = None
    wall_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def train(
    config: TrainConfig | None,
    pairs: Sequence[tuple[str | Path, str | Path]],
    out_dir: str | Path,
    val_pairs: Sequence[tuple[str | Path, str | Path]] | None = None,
    resume: bool = False,
    device: str = "auto",
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
    channels: Sequence[str | int] | None = None,
) -> TrainResult:
    """Train a conditional DDPM (or the regression baseline) on paired OME-Zarr stores.

    ``pairs``: (low, high) store paths; ``val_pairs``: separate validation stores (else
    ``config.val_fraction`` of each training pair is held out by region); ``channels``: names
    or indices (default all), each channel's planes are training images of a single-channel
    model. ``config`` may be None with ``resume`` (the checkpoint's config is used).
    ``progress(record)`` receives {"kind": "start" | "step" | "epoch", ...} records.
    Raises typed errors (bigrestore.errors); Ctrl-C gives ResumableInterrupt (exit 75).
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    dev = pick_device(device)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if not pairs:
        raise UsageError("give at least one --low/--high pair")
    record: dict[str, Any] | None = None
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

    train_pairs = [open_pair(low, high, channels) for low, high in pairs]
    held_pairs = [open_pair(low, high, channels) for low, high in val_pairs] if val_pairs else None
    data = directory.data_record(train_pairs, held_pairs, config)
    if record is not None and record.get("data") != data:
        raise IncompatibleModelError(
            describe(ckpt_dir, "--resume data", "the stores and channels of the run", "others")
        )
    train_sources, val_sources = make_sources(
        train_pairs, held_pairs, config.patch, config.val_fraction
    )
    reader = PatchReader(config.p_low, config.p_high)
    target = target_statistics(train_sources, reader)
    val_cond = val_target = None
    if val_sources:
        val_cond, val_target = fixed_patches(
            val_sources,
            config.val_patches,
            config.patch,
            config.seed,
            config.foreground_bias,
            reader,
        )
    # Reference: the raw condition scored like a prediction (what "no model" would get).
    input_mae = float(abs(val_cond - val_target).mean()) if val_cond is not None else None
    if not resume:
        directory.prepare_output(out_dir, overwrite)

    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left untouched
        torch.random.default_generator.manual_seed(config.seed)
        net = ConditionalUNet(config.unet())
    net.to(dev)
    ema = loop.make_ema(net, config.ema)
    optimizer, scheduler = loop.make_optimizer(net, config)
    run = _RunState()
    if resume:
        saved = checkpoint.load_state(ckpt_dir, net, ema, optimizer, scheduler)
        run = _RunState(**saved["run"])
    metrics = loop.MetricsLog(out_dir, run.step if resume else None)
    emit = progress or (lambda record: None)

    hardware = directory.hardware(dev)

    def provenance() -> dict[str, Any]:
        return {
            "data": data,
            "config": config.to_dict(),
            "steps": run.step,
            "total_steps": config.total_steps,
            "epochs": run.step / config.steps_per_epoch,
            "best_epoch": run.best_epoch,
            "best_step": run.best_step,
            "best_val_mae": run.best_val_mae,
            "val_metric": directory.val_metric(config, bool(val_sources)),
            "val_input_mae": input_mae,
            "validation_curve": run.history,
            "wall_seconds": round(run.wall_seconds, 3),
            "torch": torch.__version__,
            "bigrestore": __version__,
            "hardware": hardware,
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def save_checkpoint() -> None:
        checkpoint.save_state(
            ckpt_dir,
            net,
            ema,
            optimizer,
            scheduler,
            {
                "step": run.step,
                "config": config.to_dict(),
                "data": data,
                "run": run.to_dict(),
                "rng": {
                    "scheme": "keyed by (seed, step)",
                    "seed": config.seed,
                    "next_step": run.step,
                },
            },
        )

    started = time.monotonic()
    wall_before = run.wall_seconds
    first_step = run.step
    budget = config.time_budget_minutes * 60 if config.time_budget_minutes else None
    last_checkpoint = started
    stopped_early = False

    def rate() -> float:
        elapsed = time.monotonic() - started
        return (run.step - first_step) * config.batch / elapsed if elapsed > 0 else 0.0

    def end_epoch(complete: bool) -> None:
        run.wall_seconds = wall_before + time.monotonic() - started
        eval_net = ema if ema is not None else net
        mae = (
            loop.validate(eval_net, val_cond, val_target, config, dev)
            if val_cond is not None
            else None
        )
        epoch = math.ceil(run.step / config.steps_per_epoch)
        best = loop.is_better(mae, run.best_val_mae) if val_cond is not None else True
        if best:
            run.best_epoch, run.best_step, run.best_val_mae = epoch, run.step, mae
        entry = {
            "epoch": epoch,
            "step": run.step,
            "complete": complete,
            "train_loss": run.loss_sum / max(run.loss_count, 1),
            "val_mae": mae,
            "lr": optimizer.param_groups[0]["lr"],
            "patches_per_s": round(rate(), 3),
            "wall_s": round(run.wall_seconds, 3),
            "best": best,
        }
        run.history.append(entry)
        run.loss_sum, run.loss_count = 0.0, 0
        if best:
            save_model(out_dir, eval_net, directory.model_spec(config, target, provenance()))
        metrics.epoch(entry)
        save_checkpoint()
        emit({"kind": "epoch", **entry})

    emit(
        {
            "kind": "start",
            "step": run.step,
            "total_steps": config.total_steps,
            "device": str(dev),
            "batch": config.batch,
            "val_input_mae": input_mae,
        }
    )
    dataset = PatchBatches(
        train_sources,
        start=run.step,
        stop=config.total_steps,
        batch=config.batch,
        patch=config.patch,
        seed=config.seed,
        augment=config.augment,
        foreground_bias=config.foreground_bias,
        p_low=config.p_low,
        p_high=config.p_high,
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=config.workers,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if config.workers else None,
    )
    try:
        for step, cond, target_batch in loader:
            if step != run.step:
                raise RuntimeError(f"patch loader out of order: step {step}, expected {run.step}")
            loss = loop.train_step(
                net, optimizer, scheduler, cond, target_batch, config, step, dev, ema
            )
            run.step += 1
            run.loss_sum += loss
            run.loss_count += 1
            lr = optimizer.param_groups[0]["lr"]
            metrics.step(run.step, math.ceil(run.step / config.steps_per_epoch), loss, lr)
            emit(
                {
                    "kind": "step",
                    "step": run.step,
                    "total_steps": config.total_steps,
                    "loss": loss,
                    "lr": lr,
                    "patches_per_s": rate(),
                }
            )
            now = time.monotonic()
            over_budget = (
                budget is not None and now - started > budget and run.step < config.total_steps
            )
            if run.step % config.steps_per_epoch == 0 or over_budget:
                end_epoch(complete=not over_budget)
                last_checkpoint = time.monotonic()
                if over_budget:
                    stopped_early = True
                    log.info(
                        "time budget of %.1f min reached at step %d",
                        config.time_budget_minutes,
                        run.step,
                    )
                    break
            elif now - last_checkpoint > config.checkpoint_minutes * 60:
                run.wall_seconds = wall_before + now - started
                save_checkpoint()
                last_checkpoint = now
    except KeyboardInterrupt as err:
        raise ResumableInterrupt(
            f"training interrupted at step {run.step}; the last checkpoint is in {ckpt_dir}. "
            f"Continue with: bigrestore train ... --out {out_dir} --resume"
        ) from err
    finally:
        metrics.close()
    run.wall_seconds = wall_before + time.monotonic() - started

    best_net, _ = load_model(out_dir, device="cpu")  # re-export the best with the full provenance
    model_hash = save_model(out_dir, best_net, directory.model_spec(config, target, provenance()))
    return TrainResult(
        out_dir=out_dir,
        model_hash=model_hash,
        steps=run.step,
        total_steps=config.total_steps,
        best_epoch=run.best_epoch,
        best_val_mae=run.best_val_mae,
        wall_seconds=run.wall_seconds,
        stopped_early=stopped_early,
        history=list(run.history),
    )
