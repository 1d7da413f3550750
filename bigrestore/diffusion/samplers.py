"""Samplers: the one table of ways to draw a sample, and the settings that choose one.

:class:`SamplerSettings` carries the one set of defaults (those of ``bigrestore run``) and its
own validation; every sampler in :data:`SAMPLERS` has the same signature, so adding one = one
function here and one entry in the table (docs/architecture.md shows an example).

A sampler walks timesteps ts = (t_0 = T, ..., t_K = 0) with a ``denoise(y, ab)`` function that
returns the network's clean-image and noise estimates (x0, eps) as float32 tensors, and a
``noise()`` function that returns the next block of N(0, 1) values of each batch item's
position-keyed stream (DESIGN.md decision 3), drawn in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from bigrestore.diffusion.schedule import SPACINGS, Schedule, timesteps
from bigrestore.errors import BadInputError, describe

if TYPE_CHECKING:  # torch is imported by the code that calls a sampler, not by its settings
    import torch

DenoiseFn = Callable[
    ["torch.Tensor", float], "tuple[torch.Tensor, torch.Tensor]"
]  # (y_t, ab_t) -> (x0, eps)
NoiseFn = Callable[[], "torch.Tensor"]  # next (B, C, H, W) block of N(0, 1), float32


class SamplerSettings(BaseModel):
    """How each sample is drawn. The defaults are ``bigrestore run``'s.

    DDIM with eta = 1 (the DDPM posterior noise, a K-step version of the paper's Eq. 7) on 8
    uniformly spaced steps, for a v-prediction model (the bundled one): its first call already
    estimates the clean image, so 8 steps x 8 samples (64 evaluations per tile) match the
    eps-model's 50 steps x 15 samples (docs/benchmarks.md, "Few evaluations"). An eps-model
    needs about 50 steps (a run warns below 25: bigrestore.run.notes): deterministic DDIM
    (eta = 0) and few steps carry its error at the first, almost pure-noise steps
    (alpha_bar_T ~ 6e-8) into the result. ``steps`` None means the schedule's T (required by
    ``ancestral``).
    ``start`` (sampler ``estimate``): the schedule step the first clean-image estimate is
    diffused to (default T/4). ``antithetic`` (default on): samples come in pairs whose noise
    is z and -z, which cancels the odd-order part of the noise in their mean: +0.2 dB on W2S
    at the same cost, the std as well calibrated (docs/benchmarks.md, "Few evaluations").
    ``flips`` (default on): the network sees each pair of samples (each sample, without
    ``antithetic``) in one of the four mirror orientations of the tile (none, left-right,
    up-down, both; the bundled model trained with flips), and its output is mirrored back.
    Errors the network makes in one orientation but not in another then average out in the
    mean at no extra network calls (docs/benchmarks.md, "Mirrored samples"); a single sample
    is never mirrored.
    ``clip_x0`` clips each predicted clean image to [-clip_bound, clip_bound] (the authors'
    Palette-style code: [-1, 1]): without it the first steps of an eps-model divide its error
    by sqrt(alpha_bar_T) ~ 2.5e-4 and an imperfect model diverges (measured: values of
    +-1500). Model space maps each image's 1st/99.8th percentiles to -1/+1, so a bound of 1
    pins the brightest 0.2% of a real image at its 99.8th percentile.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sampler: str = "ddim"
    steps: Annotated[StrictInt, Field(ge=1)] | None = 8
    eta: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 1.0
    spacing: str = "uniform"
    clip_x0: StrictBool = True
    clip_bound: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    start: Annotated[StrictInt, Field(ge=1)] | None = None
    antithetic: StrictBool = True
    flips: StrictBool = True

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        if value not in SAMPLERS:
            raise ValueError(f"one of {', '.join(SAMPLERS)}")
        return value

    @field_validator("spacing")
    @classmethod
    def _known_spacing(cls, value: str) -> str:
        if value not in SPACINGS:
            raise ValueError(f"one of {', '.join(SPACINGS)}")
        return value

    def timesteps(self, schedule: Schedule, where: str = "sampler") -> list[int]:
        """The timesteps (T, ..., 0) on ``schedule``; refuses steps the schedule cannot give."""
        k = schedule.T if self.steps is None else self.steps
        if self.sampler == "estimate":
            return estimate_timesteps(schedule, k, self.start, self.spacing, where)
        if SAMPLERS[self.sampler].every_step:
            if k != schedule.T:
                raise BadInputError(describe(where, "steps", f"{schedule.T} ({self.sampler})", k))
            return list(range(schedule.T, -1, -1))
        if k > schedule.T:
            raise BadInputError(describe(where, "steps", f"at most T = {schedule.T}", k))
        return timesteps(schedule.T, k, self.spacing)

    def orientation(self, sample: int) -> int:
        """The mirror orientation of sample ``sample`` of a tile: bit 0 flips x, bit 1 flips y.
        Both members of an antithetic pair share one, so their noise still cancels."""
        if not self.flips:
            return 0
        return (sample // 2 if self.antithetic else sample) % 4

    def evaluations_per_sample(self, schedule: Schedule) -> int:
        """Network calls per sample (one batch item through the network once = 1)."""
        return len(self.timesteps(schedule)) - 1


def clip_prediction(
    y: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, ab: float, clip: bool, bound: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps), with x0 clipped to [-bound, bound] and eps re-derived from it when ``clip``."""
    if clip:
        x0 = x0.clamp(-bound, bound)
        eps = (y - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
    return x0, eps


def ancestral(
    denoise: DenoiseFn,
    y: torch.Tensor,
    noise: NoiseFn,
    schedule: Schedule,
    ts: Sequence[int],
    settings: SamplerSettings,
) -> torch.Tensor:
    """Ancestral DDPM, paper Eq. 7, T network calls:

    y_{t-1} = (y_t - (1-a_t)/sqrt(1-ab_t) eps_theta) / sqrt(a_t) + sigma_t z, sigma_t^2 = beta_t
    (= 1 - a_t, as in the paper), z ~ N(0, I) for t > 1 and no noise at the last step.
    """
    a, ab, beta = schedule.alphas, schedule.alpha_bar, schedule.betas
    for t in ts[:-1]:
        _, eps = clip_prediction(
            y, *denoise(y, ab[t]), ab[t], settings.clip_x0, settings.clip_bound
        )
        y = (y - (beta[t] / math.sqrt(1.0 - ab[t])) * eps) / math.sqrt(a[t])
        if t > 1:
            y = y + math.sqrt(beta[t]) * noise()
    return y


def ddim(
    denoise: DenoiseFn,
    y: torch.Tensor,
    noise: NoiseFn,
    schedule: Schedule,
    ts: Sequence[int],
    settings: SamplerSettings,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, Eq. 12) on timesteps ts = (T, ..., 0), K = len(ts) - 1 calls.

    y_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z with
    sigma = eta sqrt((1-ab_s)/(1-ab_t)) sqrt(1 - ab_t/ab_s); eta=0 is deterministic,
    eta=1 is the DDPM posterior variance. The last step (to t=0) adds no noise.
    """
    ab, eta = schedule.alpha_bar, settings.eta
    for t, s in zip(ts[:-1], ts[1:], strict=True):
        x0, eps = clip_prediction(
            y, *denoise(y, ab[t]), ab[t], settings.clip_x0, settings.clip_bound
        )
        sigma = eta * math.sqrt((1.0 - ab[s]) / (1.0 - ab[t]) * (1.0 - ab[t] / ab[s]))
        y = math.sqrt(ab[s]) * x0 + math.sqrt(max(1.0 - ab[s] - sigma**2, 0.0)) * eps
        if sigma > 0.0:
            y = y + sigma * noise()
    return y


def dpmpp_2m(
    denoise: DenoiseFn,
    y: torch.Tensor,
    noise: NoiseFn,
    schedule: Schedule,
    ts: Sequence[int],
    settings: SamplerSettings,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction, deterministic, K calls.

    With alpha_t = sqrt(ab_t), sigma_t = sqrt(1-ab_t), lambda_t = log(alpha_t/sigma_t),
    h_i = lambda_{t_i} - lambda_{t_{i-1}} and r_i = h_{i-1}/h_i:
    D_i = (1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}  (first step: D_1 = x0_0),
    y_{t_i} = (sigma_{t_i}/sigma_{t_{i-1}}) y - alpha_{t_i} (e^{-h_i} - 1) D_i.
    The final step to t=0 (lambda = inf) is first order, i.e. returns the last x0 prediction.
    """
    ab = schedule.alpha_bar
    x0_prev, h_prev = None, 0.0
    for t, s in zip(ts[:-1], ts[1:], strict=True):
        x0, _ = clip_prediction(y, *denoise(y, ab[t]), ab[t], settings.clip_x0, settings.clip_bound)
        if s == 0:
            y = x0
            break
        lam_t = 0.5 * math.log(ab[t] / (1.0 - ab[t]))
        lam_s = 0.5 * math.log(ab[s] / (1.0 - ab[s]))
        h = lam_s - lam_t
        d = x0
        if x0_prev is not None:
            r = h_prev / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        y = math.sqrt((1.0 - ab[s]) / (1.0 - ab[t])) * y - (math.sqrt(ab[s]) * math.expm1(-h)) * d
        x0_prev, h_prev = x0, h
    return y


def estimate_timesteps(
    schedule: Schedule, k: int, start: int | None, spacing: str, where: str
) -> list[int]:
    """(T, t0, ..., 0): one estimate at T, then K - 1 steps from t0 = ``start`` to 0."""
    t0 = schedule.T // 4 if start is None else start
    if k < 2:
        raise BadInputError(describe(where, "steps", "at least 2 for the estimate sampler", k))
    if not 1 <= t0 < schedule.T:
        raise BadInputError(describe(where, "start", f"a schedule step in 1..{schedule.T - 1}", t0))
    if k - 1 > t0:
        raise BadInputError(describe(where, "steps", f"at most start + 1 = {t0 + 1}", k))
    return [schedule.T, *timesteps(t0, k - 1, spacing)]


def from_estimate(
    denoise: DenoiseFn,
    y: torch.Tensor,
    noise: NoiseFn,
    schedule: Schedule,
    ts: Sequence[int],
    settings: SamplerSettings,
) -> torch.Tensor:
    """Start from an estimate (the SDEdit / CCDF pattern; Chung et al. 2022): the network's
    clean-image estimate from pure noise (one call; with v-prediction the conditional mean),
    diffused to t0 = ts[1] with fresh noise, then DDIM (eta) on the K - 1 steps from t0 to 0.
    Too small a t0 shrinks the samples' spread; too large wastes calls on pure noise."""
    ab = schedule.alpha_bar
    x0, _ = clip_prediction(
        y, *denoise(y, ab[ts[0]]), ab[ts[0]], settings.clip_x0, settings.clip_bound
    )
    start = ts[1]
    y = math.sqrt(ab[start]) * x0 + math.sqrt(1.0 - ab[start]) * noise()
    return ddim(denoise, y, noise, schedule, ts[1:], settings)


SamplerFn = Callable[
    [DenoiseFn, "torch.Tensor", NoiseFn, Schedule, Sequence[int], "SamplerSettings"], "torch.Tensor"
]


@dataclass(frozen=True)
class Sampler:
    """One row of the samplers table: the function, a line for ``--help``, whether it walks
    every schedule step (``steps`` must be T), and whether it draws noise after the start."""

    name: str
    summary: str
    run: SamplerFn
    every_step: bool = False
    stochastic: bool = True


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("ddim", "DDIM on K steps; eta 1 = DDPM posterior noise, 0 = deterministic", ddim),
        Sampler(
            "ancestral",
            "the paper's Eq. 7 on all T steps (slow; the reference)",
            ancestral,
            every_step=True,
        ),
        Sampler("dpmpp_2m", "DPM-Solver++(2M), deterministic, K steps", dpmpp_2m, stochastic=False),
        Sampler(
            "estimate",
            "one clean-image estimate, diffused to --start, then K-1 DDIM steps",
            from_estimate,
        ),
    )
}
