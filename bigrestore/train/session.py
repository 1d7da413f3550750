"""One training run in progress: the network and its optimiser, the run's counters and clock,
and what it writes (best model file, checkpoints, metrics, progress records).

:class:`Session` is built by bigrestore.train.trainer.train once the data are checked and
read; :meth:`Session.run` feeds the patch batches through the optimiser and ends each epoch
(validation, best model file, checkpoint), or stops at the time budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from bigrestore import __version__
from bigrestore.errors import ResumableInterrupt
from bigrestore.intensity import Stats
from bigrestore.model.files import ModelInfo, load_model, save_model
from bigrestore.model.unet import ConditionalUNet
from bigrestore.train import checkpoint, directory, loop
from bigrestore.train.config import TrainConfig
from bigrestore.train.init import init_record, load_initial_weights
from bigrestore.train.patches import PatchBatches
from bigrestore.train.stores import Source

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainingData:
    """What a run trains and validates on, read before anything is written.

    ``record``: the data record (bigrestore.train.directory.data_record) that --resume checks;
    ``target``: the training targets' intensity scale; ``val_cond``/``val_target``: the fixed
    validation patches (None without validation); ``input_mae``: the raw condition scored
    like a prediction (what "no model" would get)."""

    record: dict[str, Any]
    train_sources: list[Source]
    val_sources: list[Source]
    target: Stats
    val_cond: np.ndarray | None = None
    val_target: np.ndarray | None = None
    input_mae: float | None = None


@dataclass
class RunState:
    """The run's counters, saved in every checkpoint (``run``) and restored by --resume."""

    step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    best_epoch: int | None = None
    best_step: int | None = None
    best_val_mae: float | None = None
    wall_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    init_from: dict[str, Any] | None = None  # fine-tuning: the model the weights started from

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Clock:
    """Wall-clock time of this process's part of a (possibly resumed) run."""

    def __init__(self, run: RunState, config: TrainConfig) -> None:
        self.started = self.last_checkpoint = time.monotonic()
        self.wall_before = run.wall_seconds
        self.first_step = run.step
        minutes = config.time_budget_minutes
        self.budget = minutes * 60 if minutes else None

    def wall_seconds(self, now: float | None = None) -> float:
        """Seconds of training so far, earlier sessions included."""
        return self.wall_before + (time.monotonic() if now is None else now) - self.started

    def rate(self, step: int, batch: int) -> float:
        """Patches per second since this process started."""
        elapsed = time.monotonic() - self.started
        return (step - self.first_step) * batch / elapsed if elapsed > 0 else 0.0

    def over_budget(self, now: float) -> bool:
        return self.budget is not None and now - self.started > self.budget


def build_network(
    config: TrainConfig, device: torch.device
) -> tuple[ConditionalUNet, torch.nn.Module | None, torch.optim.Optimizer, Any]:
    """Seeded initial network (global RNG left untouched), its EMA, optimiser and schedule."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(config.seed)
        net = ConditionalUNet(config.unet())
    net.to(device)
    ema = loop.make_ema(net, config.ema)
    optimizer, scheduler = loop.make_optimizer(net, config)
    return net, ema, optimizer, scheduler


class Session:
    """A run from its first (or resumed) step to its end; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        data: TrainingData,
        out_dir: Path,
        device: torch.device,
        resume: bool,
        progress: Progress | None,
        init: ModelInfo | None = None,
    ) -> None:
        self.config, self.data, self.out_dir, self.device = config, data, out_dir, device
        self.ckpt_dir = out_dir / "checkpoint"
        self.net, self.ema, self.optimizer, self.scheduler = build_network(config, device)
        self.run_state = RunState()
        if init is not None and not resume:  # fine-tuning: the first step starts from its weights
            load_initial_weights(self.net, self.ema, init)
            self.run_state.init_from = init_record(init)
        if resume:
            saved = checkpoint.load_state(
                self.ckpt_dir, self.net, self.ema, self.optimizer, self.scheduler
            )
            self.run_state = RunState(**saved["run"])
        self.metrics = loop.MetricsLog(out_dir, self.run_state.step if resume else None)
        self.emit = progress or (lambda record: None)
        self.hardware = directory.hardware(device)
        self.clock = Clock(self.run_state, config)
        self.stopped_early = False

    @property
    def eval_net(self) -> torch.nn.Module:
        """The network validation scores and the model file holds (the EMA when there is one)."""
        return self.ema if self.ema is not None else self.net

    def provenance(self) -> dict[str, Any]:
        """The model file's record of how it was trained."""
        run, config = self.run_state, self.config
        return {
            "data": self.data.record,
            "config": config.to_dict(),
            "steps": run.step,
            "total_steps": config.total_steps,
            "epochs": run.step / config.steps_per_epoch,
            "best_epoch": run.best_epoch,
            "best_step": run.best_step,
            "best_val_mae": run.best_val_mae,
            "val_metric": directory.val_metric(config, bool(self.data.val_sources)),
            "val_input_mae": self.data.input_mae,
            "validation_curve": run.history,
            "init_from": run.init_from,
            "wall_seconds": round(run.wall_seconds, 3),
            "torch": torch.__version__,
            "bigrestore": __version__,
            "hardware": self.hardware,
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def save_checkpoint(self) -> None:
        run = self.run_state
        record = {
            "step": run.step,
            "config": self.config.to_dict(),
            "data": self.data.record,
            "run": run.to_dict(),
            "rng": {
                "scheme": "keyed by (seed, step)",
                "seed": self.config.seed,
                "next_step": run.step,
            },
        }
        checkpoint.save_state(
            self.ckpt_dir, self.net, self.ema, self.optimizer, self.scheduler, record
        )

    def save_model(self, net: torch.nn.Module) -> str:
        spec = directory.model_spec(self.config, self.data.target, self.provenance())
        return save_model(self.out_dir, net, spec)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def epoch(self) -> int:
        return math.ceil(self.run_state.step / self.config.steps_per_epoch)

    def validate(self) -> float | None:
        data = self.data
        if data.val_cond is None or data.val_target is None:
            return None
        return loop.validate(
            self.eval_net, data.val_cond, data.val_target, self.config, self.device
        )

    def end_epoch(self, complete: bool) -> None:
        """Validate, record the epoch, save the model file if it is the best, checkpoint."""
        run = self.run_state
        run.wall_seconds = self.clock.wall_seconds()
        mae = self.validate()
        best = loop.is_better(mae, run.best_val_mae) if self.data.val_cond is not None else True
        if best:
            run.best_epoch, run.best_step, run.best_val_mae = self.epoch(), run.step, mae
        entry = {
            "epoch": self.epoch(),
            "step": run.step,
            "complete": complete,
            "train_loss": run.loss_sum / max(run.loss_count, 1),
            "val_mae": mae,
            "lr": self.lr(),
            "patches_per_s": round(self.clock.rate(run.step, self.config.batch), 3),
            "wall_s": round(run.wall_seconds, 3),
            "best": best,
        }
        run.history.append(entry)
        run.loss_sum, run.loss_count = 0.0, 0
        if best:
            self.save_model(self.eval_net)
        self.metrics.epoch(entry)
        self.save_checkpoint()
        self.emit({"kind": "epoch", **entry})

    def loader(self) -> DataLoader:
        """Batches of the steps still to do, in step order, from ``config.workers`` processes."""
        config = self.config
        dataset = PatchBatches(
            self.data.train_sources,
            start=self.run_state.step,
            stop=config.total_steps,
            batch=config.batch,
            patch=config.patch,
            seed=config.seed,
            augment=config.augment,
            foreground_bias=config.foreground_bias,
            p_low=config.p_low,
            p_high=config.p_high,
            target_frame=config.frame,
        )
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=config.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if config.workers else None,
        )

    def emit_start(self) -> None:
        self.emit(
            {
                "kind": "start",
                "step": self.run_state.step,
                "total_steps": self.config.total_steps,
                "device": str(self.device),
                "batch": self.config.batch,
                "val_input_mae": self.data.input_mae,
            }
        )

    def step(self, step: int, cond: torch.Tensor, target: torch.Tensor) -> float:
        """One optimiser step on the batch of ``step``; logs and reports it; returns the loss."""
        run, config = self.run_state, self.config
        if step != run.step:
            raise RuntimeError(f"patch loader out of order: step {step}, expected {run.step}")
        loss = loop.train_step(
            self.net,
            self.optimizer,
            self.scheduler,
            cond,
            target,
            config,
            step,
            self.device,
            self.ema,
        )
        run.step += 1
        run.loss_sum += loss
        run.loss_count += 1
        self.metrics.step(run.step, self.epoch(), loss, self.lr())
        self.emit(
            {
                "kind": "step",
                "step": run.step,
                "total_steps": config.total_steps,
                "loss": loss,
                "lr": self.lr(),
                "patches_per_s": self.clock.rate(run.step, config.batch),
            }
        )
        return loss

    def after_step(self) -> bool:
        """End the epoch, or checkpoint when one is due; True when the time budget stops the run."""
        run, config, clock = self.run_state, self.config, self.clock
        now = time.monotonic()
        over_budget = clock.over_budget(now) and run.step < config.total_steps
        if run.step % config.steps_per_epoch == 0 or over_budget:
            self.end_epoch(complete=not over_budget)
            clock.last_checkpoint = time.monotonic()
            if over_budget:
                log.info(
                    "time budget of %.1f min reached at step %d",
                    config.time_budget_minutes,
                    run.step,
                )
            return over_budget
        if now - clock.last_checkpoint > config.checkpoint_minutes * 60:
            run.wall_seconds = clock.wall_seconds(now)
            self.save_checkpoint()
            clock.last_checkpoint = now
        return False

    def run(self) -> None:
        """Train to the last step or the time budget; Ctrl-C gives ResumableInterrupt."""
        self.emit_start()
        try:
            for step, cond, target in self.loader():
                self.step(step, cond, target)
                if self.after_step():
                    self.stopped_early = True
                    break
        except KeyboardInterrupt as err:
            raise ResumableInterrupt(
                f"training interrupted at step {self.run_state.step}; the last checkpoint is in "
                f"{self.ckpt_dir}. Continue with: bigrestore train ... --out {self.out_dir} --resume"
            ) from err
        finally:
            self.metrics.close()
        self.run_state.wall_seconds = self.clock.wall_seconds()

    def export_best(self) -> str:
        """Re-export the best model file with the run's full provenance; returns its hash."""
        best_net, _ = load_model(self.out_dir, device="cpu")
        return self.save_model(best_net)
