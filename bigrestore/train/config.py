"""Training configuration as data: frozen pydantic models loaded from YAML presets (``configs/``).

Every key of a preset maps to one field; unknown keys and bad values raise
:class:`~bigrestore.errors.BadInputError` naming the file, the field path (``model.base_channels``),
what was expected and what was found (bigrestore.checks.validate_model). The network
architecture section becomes a :class:`~bigrestore.model.unet.UNetConfig` whose
``train_resolution`` is the patch size, so attention is placed by the training resolution.
Objectives and validation samplers are the names of their registries
(bigrestore.diffusion.objectives.OBJECTIVES, bigrestore.diffusion.samplers.SAMPLERS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bigrestore.checks import validate_model
from bigrestore.devices import PRECISIONS
from bigrestore.diffusion.objectives import LOSS_DISTANCES, OBJECTIVES
from bigrestore.diffusion.samplers import SAMPLERS, SamplerSettings
from bigrestore.diffusion.schedule import Schedule, timesteps
from bigrestore.errors import BadInputError, IncompatibleModelError, MissingInputError, describe
from bigrestore.model.unet import UNetConfig

WHERE = "train config"

PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Fraction = Annotated[StrictFloat, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Percentile = Annotated[StrictFloat, Field(ge=0.0, le=100.0, allow_inf_nan=False)]
Minutes = Annotated[StrictFloat, Field(ge=1e-3, le=1e7, allow_inf_nan=False)]


class ArchitectureError(BadInputError):
    """UNetConfig refused the ``model:`` section for this patch size (e.g. attention heads that
    do not divide a level's channels); ``detail`` is "field: expected X, found Y"."""

    def __init__(self, detail: str, where: object = WHERE) -> None:
        self.detail = detail
        super().__init__(f"{where}: model.{detail}")


class ModelSettings(BaseModel):
    """U-Net width and depth (the ``model:`` section); see UNetConfig for their meaning."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_channels: PositiveInt = 64
    channel_mult: tuple[PositiveInt, ...] = (1, 2, 4, 8)
    blocks_per_level: PositiveInt = 2
    attn_resolutions: tuple[PositiveInt, ...] = (16,)
    dropout: Annotated[StrictFloat, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.0
    channels_per_head: PositiveInt = 32

    @property
    def downsample_factor(self) -> int:
        """Patch sides must be multiples of this (2 ** (len(channel_mult) - 1))."""
        return 2 ** max(len(self.channel_mult) - 1, 0)

    def unet(self, patch: int) -> UNetConfig:
        """The single-channel conditional U-Net trained on ``patch``² tiles."""
        try:
            return UNetConfig(train_resolution=patch, **self.model_dump())
        except IncompatibleModelError as err:  # re-typed: here it is a bad config, not a bad model
            raise ArchitectureError(str(err).removeprefix("unet config: ")) from None


class AugmentSettings(BaseModel):
    """Paper augmentations: random flips and 90° rotations of the pair (identically), and a
    Gaussian blur of the condition only, with probability ``blur_p`` and sigma (pixels) drawn
    uniformly from ``blur_sigma`` = (low, high)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flip: StrictBool = True
    rot90: StrictBool = True
    blur_p: Fraction = 0.0
    blur_sigma: tuple[StrictFloat, ...] = (1.0, 1.0)

    @field_validator("blur_sigma")
    @classmethod
    def _low_high(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not (len(value) == 2 and 0 < value[0] <= value[1] <= 20):
            raise ValueError("[low, high] with 0 < low <= high <= 20 pixels")
        return value


class ScheduleSettings(BaseModel):
    """The ``schedule:`` section: T steps and offset s of the cosine schedule (Schedule)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    T: PositiveInt = 200
    s: Annotated[StrictFloat, Field(gt=0.0, lt=1.0)] = 8e-3

    def schedule(self) -> Schedule:
        return Schedule(T=self.T, s=float(self.s))


def _schedule_fields(value: Any) -> Any:
    return {"T": value.T, "s": value.s} if isinstance(value, Schedule) else value


#: A Schedule, validated (and written) as its ``schedule:`` section.
ScheduleField = Annotated[
    ScheduleSettings,
    BeforeValidator(_schedule_fields),
    AfterValidator(ScheduleSettings.schedule),
    PlainSerializer(_schedule_fields),
]


class TrainConfig(BaseModel):
    """Everything that determines a training run except the data paths and the device.

    Units: ``patch`` in pixels (square, multiple of the U-Net's downsampling factor);
    ``lr`` per AdamW step, cosine-annealed to 0 over ``epochs * steps_per_epoch`` steps;
    minutes are wall-clock.

    - ``objective``: a name in bigrestore.diffusion.objectives.OBJECTIVES; ``loss``: the
      distance of one-pass objectives (l1 or l2).
    - ``val_fraction``: part of each training store held out for validation when no
      separate validation stores are given (0: no validation, the last epoch is kept).
    - ``val_sampler``/``val_steps``/``val_clip_x0``: how validation samples are drawn, see
      :meth:`validation_sampling` (``val_steps`` None: all T steps, required by samplers that
      walk every step, such as the ancestral one).
    - ``val_eta``/``val_spacing``: DDIM's stochasticity and step spacing in validation.
    - ``val_clip_x0``: clip each predicted y_0 to [-1, 1] while sampling, as the authors'
      Palette-style code does; without it a deterministic sampler started at ab_T ~ 6e-8
      amplifies the network's noise error at t = T about 1000-fold.
    - ``foreground_bias``: probability that a patch must show foreground (see
      bigrestore.train.patches).
    - ``ema``: decay of an exponential moving average of the weights, with a warm-up (see
      bigrestore.train.loop.ema_decay); 0: none. Validation and export use the average.
    - ``p_low``/``p_high``: percentiles of each plane mapped to -1/+1 (model space).
    - ``target_frame``: how a target plane enters model space (bigrestore.train.patches).
      ``own``: by its own percentiles, as the paper does; fine for pairs from one microscope,
      whose low and high planes differ by a fixed intensity map. ``low``: fitted to its low
      plane by least squares (a·high + b ≈ low) and normalised with the low plane's
      percentiles, so the target is the noise-free input in the input's units. Needed when
      pairs differ by background, gain and photon level (the generalist set): with ``own``
      the network must guess that map from each patch, and the guesses differ from tile to
      tile at run time. Unset: ``own``, or with --init-from the starting model's frame.
    - ``precision``: network arithmetic, see bigrestore.devices.autocast_dtype (auto: bf16
      autocast on GPUs and on CPUs with native bf16, fp32 master weights; else fp32).
    - ``train_timesteps``/``train_spacing``: train only on the K timesteps a K-step sampler
      visits (Fast-DDPM, Jiang et al. 2024; None: all of 1..T). Validation then samples on
      exactly those steps (DDIM, eta 1).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    objective: str = "diffusion"
    loss: Literal[LOSS_DISTANCES] = "l1"  # type: ignore[valid-type]
    model: ModelSettings = ModelSettings()
    schedule: ScheduleField = Schedule()
    patch: Annotated[StrictInt, Field(ge=8)] = 256
    batch: PositiveInt = 8
    lr: Annotated[StrictFloat, Field(ge=1e-12, le=1.0, allow_inf_nan=False)] = 2e-4
    weight_decay: Fraction = 0.0
    epochs: PositiveInt = 100
    steps_per_epoch: PositiveInt = 500
    val_patches: PositiveInt = 32
    val_samples: PositiveInt = 8
    val_sampler: str = "ancestral"
    val_steps: PositiveInt | None = None
    val_clip_x0: StrictBool = True
    val_eta: Annotated[StrictFloat, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0
    val_spacing: Literal["uniform", "quadratic"] = "quadratic"
    val_fraction: Annotated[StrictFloat, Field(ge=0.0, lt=0.5, allow_inf_nan=False)] = 0.1
    augment: AugmentSettings = AugmentSettings()
    foreground_bias: Fraction = 0.0
    ema: Annotated[StrictFloat, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.0
    seed: NonNegativeInt = 0
    workers: NonNegativeInt = 1
    p_low: Percentile = 1.0
    p_high: Percentile = 99.8
    target_frame: Literal["own", "low"] | None = None
    time_budget_minutes: Minutes | None = None
    checkpoint_minutes: Minutes = 10.0
    precision: Literal[PRECISIONS] = "auto"  # type: ignore[valid-type]
    train_timesteps: PositiveInt | None = None
    train_spacing: Literal["uniform", "quadratic"] = "uniform"

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, value: str) -> str:
        if value not in OBJECTIVES:
            raise ValueError(" or ".join(OBJECTIVES))
        return value

    @field_validator("val_sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        if value not in SAMPLERS:
            raise ValueError(" or ".join(SAMPLERS))
        return value

    @field_validator("patch")
    @classmethod
    def _fits_the_levels(cls, patch: int, info: ValidationInfo) -> int:
        model = info.data.get("model")  # absent when the model section was refused
        if model is not None and patch % model.downsample_factor:
            factor = model.downsample_factor
            raise ValueError(f"a multiple of {factor} (2 ** (len(model.channel_mult) - 1))")
        return patch

    @field_validator("val_steps")
    @classmethod
    def _steps_on_the_schedule(cls, steps: int | None, info: ValidationInfo) -> int | None:
        schedule, sampler = info.data.get("schedule"), info.data.get("val_sampler")
        if steps is None or schedule is None or sampler is None:
            return steps
        if steps > schedule.T:
            raise ValueError(f"at most schedule.T = {schedule.T}")
        if SAMPLERS[sampler].every_step and steps != schedule.T:
            raise ValueError(f"null or {schedule.T} for the {sampler} sampler")
        return steps

    @field_validator("p_high")
    @classmethod
    def _above_p_low(cls, p_high: float, info: ValidationInfo) -> float:
        p_low = info.data.get("p_low")
        if p_low is not None and p_low >= p_high:
            raise ValueError(f"greater than p_low = {p_low}")
        return p_high

    @model_validator(mode="after")
    def _architecture(self) -> TrainConfig:
        self.unet()  # ArchitectureError (not a ValueError, so pydantic lets it through)
        return self

    def unet(self) -> UNetConfig:
        return self.model.unet(self.patch)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def training_timesteps(self) -> list[int] | None:
        """The timesteps the loss draws t from (None: all of 1..T)."""
        if self.train_timesteps is None:
            return None
        return timesteps(self.schedule.T, self.train_timesteps, self.train_spacing)[:-1]

    def validation_sampling(self) -> SamplerSettings:
        """How validation draws each sample: ``val_sampler`` on ``val_steps`` quadratically
        spaced steps, deterministic where the sampler allows (eta 0), x0 clipped if
        ``val_clip_x0``; a model trained on ``train_timesteps`` is sampled on exactly those."""
        if self.train_timesteps is not None:
            return SamplerSettings(
                sampler="ddim",
                steps=self.train_timesteps,
                eta=1.0,
                spacing=self.train_spacing,
                clip_x0=self.val_clip_x0,
            )
        return SamplerSettings(
            sampler=self.val_sampler,
            steps=self.val_steps,
            eta=self.val_eta,
            spacing=self.val_spacing,
            clip_x0=self.val_clip_x0,
        )

    @property
    def frame(self) -> str:
        """The target frame in effect (``target_frame``, ``own`` when unset)."""
        return self.target_frame or "own"

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some top-level fields changed (e.g. ``epochs``)."""
        return TrainConfig.from_dict({**dict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready nested dict; ``TrainConfig.from_dict(c.to_dict()) == c``."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any, source: object = WHERE) -> TrainConfig:
        """Build and validate from a nested mapping; ``source`` (e.g. the YAML path) is named
        in every error. Missing keys take the defaults above; unknown keys are errors."""
        try:
            return validate_model(cls, data, source)
        except ArchitectureError as err:
            raise ArchitectureError(err.detail, source) from None


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
        where = f"{path} (with command-line overrides)"
        config = TrainConfig.from_dict({**dict(config), **changes}, source=where)
    return config
