"""``bigrestore train``: parse options into a TrainConfig, call bigrestore.train.train, draw
the progress bar (the only place that does)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # torch is imported by training, not by the command line's start
    from bigrestore.train import TrainConfig, TrainResult

PATH = click.Path(path_type=Path)


class RegistryChoice(click.Choice):
    """A click.Choice over the names of a registry, read when first needed: the objectives
    table imports torch, which the command line must start without."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names
        self.case_sensitive = True

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())


def _objective_names() -> Iterable[str]:
    from bigrestore.diffusion.objectives import OBJECTIVES

    return OBJECTIVES


def _options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator applying ``decorators`` in the order written (first = topmost)."""

    def apply(function: Any) -> Any:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def store_option(flag: str, name: str, text: str, required: bool = False) -> Any:
    """A repeatable option naming one OME-Zarr store per use (pairs match by position)."""
    return click.option(flag, name, multiple=True, required=required, type=PATH, help=text)


STORE_OPTIONS = _options(
    store_option(
        "--low",
        "lows",
        "Low-SNR (condition) OME-Zarr store; repeat with --high for several pairs.",
        required=True,
    ),
    store_option(
        "--high",
        "highs",
        "High-SNR (target) OME-Zarr store, same shape as its --low.",
        required=True,
    ),
    store_option(
        "--val-low",
        "val_lows",
        "Validation pair (condition); default: hold out part of each training pair.",
    ),
    store_option("--val-high", "val_highs", "Validation pair (target)."),
    click.option(
        "--weight",
        "weights",
        multiple=True,
        type=float,
        help="Share of patches from each --low/--high pair (repeat, in order; default: by pixels).",
    ),
    click.option(
        "--config",
        "config_path",
        type=PATH,
        default=None,
        help="YAML preset, e.g. configs/cpu-small.yaml or configs/paper.yaml (not needed with "
        "--resume).",
    ),
    click.option(
        "--out",
        "out_dir",
        required=True,
        type=PATH,
        help="Model directory: model.safetensors/json (best epoch), checkpoint/, metrics.csv.",
    ),
)
RUN_OPTIONS = _options(
    click.option(
        "--objective",
        type=RegistryChoice(_objective_names),
        default=None,
        help="Override the config: v (diffusion predicting v, the bundled model's; few sampler "
        "steps suffice), diffusion (the paper's noise prediction; needs ~50 steps) or regression "
        "(one pass, CARE-like; no uncertainty).",
    ),
    click.option(
        "--channel",
        "channels",
        multiple=True,
        help="Channel name or index to train on (repeatable; default all channels).",
    ),
    click.option("--epochs", type=int, default=None, help="Override the config's epochs."),
    click.option(
        "--max-minutes",
        type=float,
        default=None,
        help="Stop after this many minutes (validates, checkpoints; --resume continues).",
    ),
    click.option(
        "--workers",
        type=int,
        default=None,
        help="Patch-reading worker processes (config: workers).",
    ),
    click.option("--seed", type=int, default=None, help="Override the config's seed."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out."),
    click.option("--overwrite", is_flag=True, help="Replace an existing training directory."),
    click.option(
        "--init-from",
        "init_from",
        default=None,
        help="Fine-tune: start from this model's weights ('bundled': the model bigrestore ships); "
        "its network, objective and percentiles replace the config's (use configs/finetune.yaml).",
    ),
)


def check_pairs(
    lows: tuple[Path, ...],
    highs: tuple[Path, ...],
    val_lows: tuple[Path, ...],
    val_highs: tuple[Path, ...],
) -> None:
    if len(lows) != len(highs):
        raise click.UsageError(
            f"--low and --high must pair up: {len(lows)} --low, {len(highs)} --high"
        )
    if len(val_lows) != len(val_highs):
        raise click.UsageError(
            f"--val-low and --val-high must pair up: {len(val_lows)} vs {len(val_highs)}"
        )


def train_config(
    config_path: Path | None, out_dir: Path, resume: bool, **overrides: Any
) -> TrainConfig:
    """The preset with the command line's overrides, or (``--resume`` without ``--config``) the
    checkpoint's config, whose results-changing fields cannot be overridden."""
    from bigrestore.train.config import load_config
    from bigrestore.train.directory import checkpoint_config

    if config_path is None and not resume:
        raise click.UsageError("--config is required (e.g. configs/cpu-small.yaml) unless --resume")
    if config_path is not None:
        return load_config(config_path, **overrides)
    fixed = ("objective", "epochs", "seed")
    if any(overrides.get(name) is not None for name in fixed):
        raise click.UsageError(
            "--objective/--epochs/--seed need --config (a resumed run keeps its config)"
        )
    changes = {k: v for k, v in overrides.items() if k not in fixed and v is not None}
    return checkpoint_config(out_dir).replace(**changes)


class ProgressBar:
    """The ``progress`` callback of bigrestore.train.train: a tqdm bar drawn at the first
    record (so refusals print one line only) and lines for the start and every epoch."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=None, unit="step", desc="training", dynamic_ncols=True)
        bar = self.bar
        if record["kind"] == "start":
            bar.reset(total=record["total_steps"])
            bar.update(record["step"])
            bar.write(
                f"training on {record['device']}, batch {record['batch']}, "
                f"steps {record['step']}..{record['total_steps']}"
            )
            if record["val_input_mae"] is not None:
                bar.write(f"validation MAE of the raw input: {record['val_input_mae']:.4f}")
        elif record["kind"] == "step":
            bar.update(1)
            bar.set_postfix(
                loss=f"{record['loss']:.4f}",
                patches_s=f"{record['patches_per_s']:.1f}",
                refresh=False,
            )
        elif record["kind"] == "epoch":
            mae = "-" if record["val_mae"] is None else f"{record['val_mae']:.4f}"
            bar.write(
                f"epoch {record['epoch']} (step {record['step']}): train loss "
                f"{record['train_loss']:.4f}, val MAE {mae}{' (best)' if record['best'] else ''}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def report(result: TrainResult, out_dir: Path) -> None:
    best = "-" if result.best_val_mae is None else f"{result.best_val_mae:.4f}"
    click.echo(
        f"trained {result.steps}/{result.total_steps} steps in {result.wall_seconds / 60:.1f} min; "
        f"best epoch {result.best_epoch} (validation MAE {best})"
    )
    if result.stopped_early:
        click.echo(f"stopped by the time budget; continue with --resume --out {out_dir}")
    click.echo(f"model: {result.out_dir}  (bigrestore run IMAGE.zarr --model {result.out_dir})")


@click.command("train")
@STORE_OPTIONS
@RUN_OPTIONS
def command(
    lows: tuple[Path, ...],
    highs: tuple[Path, ...],
    val_lows: tuple[Path, ...],
    val_highs: tuple[Path, ...],
    weights: tuple[float, ...],
    config_path: Path | None,
    out_dir: Path,
    objective: str | None,
    channels: tuple[str, ...],
    epochs: int | None,
    max_minutes: float | None,
    workers: int | None,
    seed: int | None,
    device: str,
    resume: bool,
    overwrite: bool,
    init_from: str | None,
) -> None:
    """Train a restoration model on paired low/high-SNR OME-Zarr stores.

    Patches are read lazily from the stores (never a whole volume), normalised per plane by
    percentiles, augmented, and fed to the conditional DDPM of the paper (or, with
    --objective regression, the same U-Net as a one-pass regression model). The epoch with
    the lowest validation MAE is saved as a model file for `bigrestore run --model`.

    \b
    Examples:
      bigrestore train --low low.zarr --high high.zarr --config configs/cpu-small.yaml --out model/
      bigrestore train --low a_low.zarr --high a_high.zarr --low b_low.zarr --high b_high.zarr \\
          --val-low v_low.zarr --val-high v_high.zarr --config configs/paper.yaml --out model/
      bigrestore train --out model/ --low low.zarr --high high.zarr --resume
      bigrestore train --low mine_low.zarr --high mine_high.zarr --init-from bundled \\
          --config configs/finetune.yaml --out my-model/
    """
    from bigrestore.run.settings import bundled_model_path
    from bigrestore.train import train

    check_pairs(lows, highs, val_lows, val_highs)
    if weights and len(weights) != len(lows):
        raise click.UsageError(
            f"--weight: one per --low/--high pair: {len(weights)} for {len(lows)} pairs"
        )
    config = train_config(
        config_path,
        out_dir,
        resume,
        objective=objective,
        epochs=epochs,
        seed=seed,
        time_budget_minutes=max_minutes,
        workers=workers,
    )
    progress = ProgressBar()
    try:
        result = train(
            config,
            [
                (low, high, *([w] if weights else []))
                for low, high, w in zip(lows, highs, weights or [0.0] * len(lows), strict=True)
            ],
            out_dir,
            val_pairs=list(zip(val_lows, val_highs, strict=True)) or None,
            resume=resume,
            device=device,
            progress=progress,
            overwrite=overwrite,
            channels=channels or None,
            init_from=bundled_model_path() if init_from == "bundled" else init_from,
        )
    finally:
        progress.close()
    report(result, out_dir)
