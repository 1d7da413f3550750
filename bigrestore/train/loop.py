"""The pieces of one training run: optimiser, step, EMA, validation, metrics log.

The paper's recipe (Osuna-Vargas et al., WACV 2025): AdamW, cosine annealing of the learning
rate (here per step, to 0 over the whole run), the DDPM noise-prediction loss (diffusion) or
an L1/L2 loss of the one-pass prediction (regression baseline), best epoch by validation MAE
of the sampled prediction. Where bf16 is native (GPUs, CPUs with AMX/AVX512-BF16) the forward runs under bf16 autocast
with fp32 master weights (config ``precision``).

Every random draw of a step (diffusion time t, noise eps, dropout masks) is keyed by
(seed, step), so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigrestore.devices import autocast_dtype, network_autocast
from bigrestore.diffusion.noise import TileKey
from bigrestore.diffusion.objectives import LossInputs, get_objective, predict_once
from bigrestore.diffusion.repeated import sample_repeated
from bigrestore.train.config import TrainConfig

log = logging.getLogger(__name__)

STEP_STREAM = 0x7374
EPOCH_FIELDS = (
    "epoch",
    "step",
    "complete",
    "train_loss",
    "val_mae",
    "lr",
    "patches_per_s",
    "wall_s",
    "best",
)
STEP_FIELDS = ("step", "epoch", "loss", "lr")


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for the torch generators of training step ``step``."""
    return int(
        np.random.SeedSequence([seed, STEP_STREAM, step]).generate_state(1, np.uint64)[0] >> 1
    )


def make_optimizer(net: torch.nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW and a per-step cosine annealing of its learning rate to 0 over the whole run."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.total_steps, eta_min=0.0
    )
    return optimizer, scheduler


def make_ema(net: torch.nn.Module, decay: float) -> torch.nn.Module | None:
    """A frozen copy of ``net`` for an exponential moving average of its weights (None if 0)."""
    if decay <= 0:
        return None
    ema = copy.deepcopy(net).eval()
    ema.requires_grad_(False)
    return ema


def ema_decay(decay: float, step: int) -> float:
    """Decay used after optimiser step ``step`` (0-based): min(decay, (1 + step) / (10 + step)).

    The warm-up keeps the average from being dominated by the random initial weights early
    in a run (with decay 0.999 they would still weigh 0.999^500 = 61 % after 500 steps).
    """
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay theta_ema + (1 - decay) theta; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), net.parameters(), strict=True):
        p_ema.lerp_(p.detach(), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
        b_ema.copy_(b)


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    cond: torch.Tensor,
    target: torch.Tensor,
    config: TrainConfig,
    step: int,
    device: torch.device,
    ema: torch.nn.Module | None = None,
) -> float:
    """One optimiser step on a batch (B, 1, P, P) in model space; returns the loss.

    Diffusion: the paper's DDPM loss || eps_theta(x, sqrt(ab_t) y0 + sqrt(1 - ab_t) eps, ab_t) - eps ||²
    with t ~ U{1..T}. Regression: mean |f(x) - y0| (l1) or (f(x) - y0)² (l2).
    """
    seed = step_seed(config.seed, step)
    cond, target = cond.to(device, non_blocking=True), target.to(device, non_blocking=True)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    net.train()
    with torch.random.fork_rng(devices=devices):  # dropout masks keyed by step; RNG restored after
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        with network_autocast(device.type, autocast_dtype(config.precision, device)):
            generator = torch.Generator(device=device).manual_seed(seed)
            inputs = LossInputs(
                config.schedule, generator, config.loss, config.training_timesteps()
            )
            loss = get_objective(config.objective, "train config").loss(net, cond, target, inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
    optimizer.step()
    scheduler.step()
    if ema is not None:
        update_ema(ema, net, ema_decay(config.ema, step))
    return float(loss.detach())


@torch.no_grad()
def validate(
    net: torch.nn.Module,
    cond: np.ndarray,
    target: np.ndarray,
    config: TrainConfig,
    device: torch.device,
) -> float:
    """Validation MAE in model space (target percentiles p_low..p_high span -1..1) of the
    prediction on the fixed patches: for sampled objectives the mean of ``val_samples`` samples
    (DDPM-avg, drawn as ``config.validation_sampling()`` says, noise keyed by patch index so
    every epoch draws the same noise); for the others their one-pass prediction."""
    was_training = net.training
    net.eval()
    autocast = autocast_dtype(config.precision, device)
    chunk = max(config.batch, 16)
    objective = get_objective(config.objective, "train config")
    sampling = config.validation_sampling()
    errors = []
    try:
        for start in range(0, len(cond), chunk):
            x = torch.from_numpy(cond[start : start + chunk]).to(device)
            y = torch.from_numpy(target[start : start + chunk]).to(device)
            if objective.sampled:
                keys = [TileKey(config.seed, 0, 0, 0, start + i, 0) for i in range(len(x))]
                pred = sample_repeated(
                    net,
                    x,
                    keys,
                    config.val_samples,
                    config.schedule,
                    sampling,
                    objective=objective,
                    device=device,
                    max_batch=chunk,
                    pad_batches=False,
                    autocast_dtype=autocast,
                ).mean
            else:
                with network_autocast(device.type, autocast):
                    pred = predict_once(net, x)
            errors.append((pred.float() - y).abs().mean(dim=(1, 2, 3)).cpu())
    finally:
        net.train(was_training)
    return float(torch.cat(errors).mean())


class MetricsLog:
    """``metrics.csv`` (one row per validation), ``steps.csv`` (one row per step) and, when
    the tensorboard package is installed, TensorBoard scalars under ``tensorboard/``."""

    def __init__(self, directory: Path, resume_step: int | None) -> None:
        self.directory = Path(directory)
        self.epochs_path = self.directory / "metrics.csv"
        self.steps_path = self.directory / "steps.csv"
        for path, fields in ((self.epochs_path, EPOCH_FIELDS), (self.steps_path, STEP_FIELDS)):
            _truncate_csv(path, fields, resume_step)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.directory / "tensorboard"))
        except ImportError:
            log.debug("tensorboard not installed; metrics go to CSV only")

    def step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        _append(
            self.steps_path,
            STEP_FIELDS,
            {"step": step, "epoch": epoch, "loss": f"{loss:.6g}", "lr": f"{lr:.6g}"},
        )
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, step)
            self._tb.add_scalar("train/lr", lr, step)

    def epoch(self, record: dict[str, Any]) -> None:
        _append(self.epochs_path, EPOCH_FIELDS, record)
        if self._tb is not None and record.get("val_mae") is not None:
            self._tb.add_scalar("val/mae", record["val_mae"], record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _truncate_csv(path: Path, fields: tuple[str, ...], resume_step: int | None) -> None:
    """Start ``path`` afresh, or on resume keep its rows up to the checkpoint's step."""
    rows: list[dict[str, str]] = []
    if resume_step is not None and path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [
                r
                for r in csv.DictReader(f)
                if r.get("step", "").isdigit() and int(r["step"]) <= resume_step
            ]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _append(path: Path, fields: tuple[str, ...], row: dict[str, Any]) -> None:
    with open(path, "a", newline="", encoding="utf-8") as f:
        csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerow(
            {k: ("" if row.get(k) is None else row.get(k)) for k in fields}
        )


def is_better(mae: float | None, best: float | None) -> bool:
    return mae is not None and math.isfinite(mae) and (best is None or mae < best)
