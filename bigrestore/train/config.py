"""Training configuration as data: frozen dataclasses loaded from YAML presets (``configs/``).

Every key of a preset maps to one field; unknown keys and bad values raise
:class:`~bigrestore.errors.BadInputError` naming the file and the field (STYLE.md 4). The
network architecture section becomes a :class:`~bigrestore.model.unet.UNetConfig` whose
``train_resolution`` is the patch size, so attention is placed by the training resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bigrestore.devices import PRECISIONS
from bigrestore.diffusion.samplers import SAMPLERS
from bigrestore.diffusion.schedule import Schedule
from bigrestore.errors import BadInputError, IncompatibleModelError, MissingInputError, describe
from bigrestore.model.unet import UNetConfig

WHERE = "train config"
OBJECTIVES = ("diffusion", "regression")
LOSSES = ("l1", "l2")


def _fail(field_name: str, expected: str, found: object) -> None:
    raise BadInputError(describe(WHERE, field_name, expected, repr(found)))


def _int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(name, f"an integer >= {low}", value)


def _number(name: str, value: object, low: float, high: float, *, closed_high: bool = True) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and low <= value and (value <= high if closed_high else value < high)
    if not ok:
        bracket = "]" if closed_high else ")"
        _fail(name, f"a number in [{low}, {high}{bracket}", value)


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        _fail(name, "true or false", value)


def _as_tuple(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if isinstance(value, list):
        object.__setattr__(obj, name, tuple(value))


@dataclass(frozen=True)
class ModelSettings:
    """U-Net width and depth (the ``model:`` section); see UNetConfig for their meaning."""

    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    blocks_per_level: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    channels_per_head: int = 32

    def __post_init__(self) -> None:
        _as_tuple(self, "channel_mult")
        _as_tuple(self, "attn_resolutions")

    def unet(self, patch: int) -> UNetConfig:
        """The single-channel conditional U-Net trained on ``patch``² tiles."""
        try:
            return UNetConfig(train_resolution=patch, **dataclasses.asdict(self))
        except IncompatibleModelError as err:  # re-typed: here it is a bad config, not a bad model
            raise BadInputError(str(err).replace("unet config", f"{WHERE}: model", 1)) from err


@dataclass(frozen=True)
class AugmentSettings:
    """Paper augmentations: random flips and 90° rotations of the pair (identically), and a
    Gaussian blur of the condition only, with probability ``blur_p`` and sigma (pixels) drawn
    uniformly from ``blur_sigma`` = (low, high)."""

    flip: bool = True
    rot90: bool = True
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        _as_tuple(self, "blur_sigma")
        _bool("augment.flip", self.flip)
        _bool("augment.rot90", self.rot90)
        _number("augment.blur_p", self.blur_p, 0.0, 1.0)
        sig = self.blur_sigma
        if not (
            isinstance(sig, tuple)
            and len(sig) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in sig)
            and 0 < sig[0] <= sig[1] <= 20
        ):
            _fail("augment.blur_sigma", "[low, high] with 0 < low <= high <= 20 pixels", sig)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run except the data paths and the device.

    Units: ``patch`` in pixels (square, multiple of the U-Net's downsampling factor);
    ``lr`` per AdamW step, cosine-annealed to 0 over ``epochs * steps_per_epoch`` steps;
    minutes are wall-clock.

    - ``val_fraction``: part of each training store held out for validation when no
      separate validation stores are given (0: no validation, the last epoch is kept).
    - ``val_steps``: network calls per validation sample (None: all T steps, required by the
      ancestral sampler).
    - ``val_clip_x0``: clip each predicted y_0 to [-1, 1] while sampling, as the authors'
      Palette-style code does; without it a deterministic sampler started at ab_T ~ 6e-8
      amplifies the network's noise error at t = T about 1000-fold.
    - ``foreground_bias``: probability that a patch must show foreground (see
      bigrestore.train.patches).
    - ``ema``: decay of an exponential moving average of the weights, with a warm-up (see
      bigrestore.train.loop.ema_decay); 0: none. Validation and export use the average.
    - ``p_low``/``p_high``: percentiles of each plane mapped to -1/+1 (model space).
    - ``precision``: network arithmetic, see bigrestore.devices.autocast_dtype (auto: bf16
      autocast on GPUs and on CPUs with native bf16, fp32 master weights; else fp32).
    """

    objective: str = "diffusion"
    loss: str = "l1"
    model: ModelSettings = field(default_factory=ModelSettings)
    schedule: Schedule = field(default_factory=Schedule)
    patch: int = 256
    batch: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.0
    epochs: int = 100
    steps_per_epoch: int = 500
    val_patches: int = 32
    val_samples: int = 8
    val_sampler: str = "ancestral"
    val_steps: int | None = None
    val_clip_x0: bool = True
    val_fraction: float = 0.1
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    foreground_bias: float = 0.0
    ema: float = 0.0
    seed: int = 0
    workers: int = 1
    p_low: float = 1.0
    p_high: float = 99.8
    time_budget_minutes: float | None = None
    checkpoint_minutes: float = 10.0
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            _fail("precision", " or ".join(PRECISIONS), self.precision)
        if self.objective not in OBJECTIVES:
            _fail("objective", " or ".join(OBJECTIVES), self.objective)
        if self.loss not in LOSSES:
            _fail("loss", " or ".join(LOSSES), self.loss)
        for name, low in (
            ("patch", 8),
            ("batch", 1),
            ("epochs", 1),
            ("steps_per_epoch", 1),
            ("val_patches", 1),
            ("val_samples", 1),
            ("seed", 0),
            ("workers", 0),
        ):
            _int(name, getattr(self, name), low)
        _number("lr", self.lr, 1e-12, 1.0)
        _number("weight_decay", self.weight_decay, 0.0, 1.0)
        _number("val_fraction", self.val_fraction, 0.0, 0.5, closed_high=False)
        _number("foreground_bias", self.foreground_bias, 0.0, 1.0)
        _number("ema", self.ema, 0.0, 1.0, closed_high=False)
        _number("p_low", self.p_low, 0.0, 100.0)
        _number("p_high", self.p_high, 0.0, 100.0)
        if self.p_low >= self.p_high:
            _fail("p_high", f"greater than p_low = {self.p_low}", self.p_high)
        _bool("val_clip_x0", self.val_clip_x0)
        if self.val_sampler not in SAMPLERS:
            _fail("val_sampler", " or ".join(SAMPLERS), self.val_sampler)
        if self.val_steps is not None:
            _int("val_steps", self.val_steps, 1)
            if self.val_steps > self.schedule.T:
                _fail("val_steps", f"at most schedule.T = {self.schedule.T}", self.val_steps)
            if self.val_sampler == "ancestral" and self.val_steps != self.schedule.T:
                _fail(
                    "val_steps",
                    f"null or {self.schedule.T} for the ancestral sampler",
                    self.val_steps,
                )
        if self.time_budget_minutes is not None:
            _number("time_budget_minutes", self.time_budget_minutes, 1e-3, 1e7)
        _number("checkpoint_minutes", self.checkpoint_minutes, 1e-3, 1e7)
        levels = self.model.channel_mult
        factor = 2 ** (len(levels) - 1) if isinstance(levels, tuple) and levels else 1
        if self.patch % factor:
            _fail(
                "patch", f"a multiple of {factor} (2 ** (len(model.channel_mult) - 1))", self.patch
            )
        self.unet()  # the architecture itself

    def unet(self) -> UNetConfig:
        return self.model.unet(self.patch)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some top-level fields changed (e.g. ``epochs``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready nested dict; ``TrainConfig.from_dict(c.to_dict()) == c``."""

        def plain(value: Any) -> Any:
            if isinstance(value, tuple | list):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        out = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["model"] = plain(dataclasses.asdict(self.model))
        out["augment"] = plain(dataclasses.asdict(self.augment))
        out["schedule"] = {"T": self.schedule.T, "s": self.schedule.s}
        return out

    @classmethod
    def from_dict(cls, data: Any, source: object = WHERE) -> TrainConfig:
        """Build and validate from a nested mapping; ``source`` (e.g. the YAML path) is named
        in every error. Missing keys take the defaults above; unknown keys are errors."""
        try:
            return _build(data)
        except BadInputError as err:
            raise BadInputError(f"{source}: {err}") from err


def _section(data: Any, name: str, cls: type) -> dict[str, Any]:
    if not isinstance(data, dict):
        _fail(name or "top level", "a mapping", type(data).__name__)
    known = (
        [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else ["T", "s"]
    )
    for key in data:
        if key not in known:
            prefix = f"{name}." if name else ""
            raise BadInputError(
                describe(WHERE, f"{prefix}{key}", f"one of {', '.join(known)}", "an unknown key")
            )
    return dict(data)


def _build(data: Any) -> TrainConfig:
    top = _section(data, "", TrainConfig)
    if "model" in top:
        model = _section(top["model"], "model", ModelSettings)
        for key in ("base_channels", "blocks_per_level", "channels_per_head"):
            if key in model:
                _int(f"model.{key}", model[key], 1)
        for key in ("channel_mult", "attn_resolutions"):
            if key in model and not isinstance(model[key], list | tuple):
                _fail(f"model.{key}", "a list of positive integers", model[key])
        top["model"] = ModelSettings(**model)
    if "augment" in top:
        top["augment"] = AugmentSettings(**_section(top["augment"], "augment", AugmentSettings))
    if "schedule" in top:
        sched = _section(top["schedule"], "schedule", Schedule)
        T, s = sched.get("T", 200), sched.get("s", 8e-3)
        _int("schedule.T", T, 1)
        _number("schedule.s", s, 1e-9, 1.0, closed_high=False)
        top["schedule"] = Schedule(T=T, s=float(s))
    return TrainConfig(**top)


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a YAML preset; ``overrides`` (non-None values) replace top-level fields."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(describe(path, "config", "an existing YAML file", "nothing"))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise BadInputError(describe(path, "config", "readable YAML", err)) from err
    config = TrainConfig.from_dict(data if data is not None else {}, source=path)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes:
        try:
            config = config.replace(**changes)
        except BadInputError as err:
            raise BadInputError(f"{path} (with command-line overrides): {err}") from err
    return config
