"""Training objectives: the one table of what a model's network predicts and how it learns it.

An :class:`Objective` says how the network is trained (``loss``), how its output becomes a
clean-image estimate and a noise estimate while sampling (``denoise``), whether ``bigrestore
run`` draws N samples per tile from it (``sampled``) or makes one pass (``predict``), and what
its validation measures. Model files name their objective; training configs choose one; the
CLI's choices come from :data:`OBJECTIVES`. Adding an objective = one function pair here and
one entry in the table (docs/architecture.md shows an example).

Conventions: images are float32 tensors (B, C, H, W) in model space (targets scaled to about
[-1, 1]); the network is called as ``net(cond, y_t, alpha_bar)``; ``ab`` is alpha_bar_t.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bigrestore.diffusion.schedule import Schedule
from bigrestore.errors import BadInputError, IncompatibleModelError, describe

LOSS_DISTANCES = ("l1", "l2")


class Network(Protocol):
    """net(cond (B,Cc,H,W), y_t (B,Co,H,W), alpha_bar (B,)) -> (B,Co,H,W)."""

    def __call__(
        self, cond: torch.Tensor, y_t: torch.Tensor, alpha_bar: torch.Tensor
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class LossInputs:
    """What a loss may need besides the batch: the schedule, the step's generator (keyed by
    (seed, step) in training), the distance of one-pass objectives, and the timesteps to train
    on (None: all of 1..T)."""

    schedule: Schedule
    generator: torch.Generator | None = None
    distance: str = "l1"
    train_timesteps: Sequence[int] | None = None


Denoise = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
Loss = Callable[[Network, torch.Tensor, torch.Tensor, LossInputs], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """One row of the objectives table (see the module docstring)."""

    name: str
    summary: str
    sampled: bool
    loss: Loss
    #: (network output, y_t, ab_t) -> (x0 estimate, eps estimate), float32; sampled objectives only.
    denoise: Denoise | None = None
    #: Whether one call from pure noise already estimates the clean image well (the conditional
    #: mean): what background tiles get instead of N samples (bigrestore.run.background).
    first_estimate: bool = False

    def validation(self, sampling: str) -> str:
        """What a validation MAE of this objective measures (stored in the provenance)."""
        return sampling if self.sampled else "one-pass prediction"


# ----------------------------------------------------------------------------- diffusion (eps)


def noisy_targets(
    y0: torch.Tensor, inputs: LossInputs
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw t and eps for a batch: returns (y_t, eps, ab (B,) float64 on CPU, c_y0, c_eps), where
    y_t = sqrt(ab_t) y0 + sqrt(1 - ab_t) eps with t ~ U{train timesteps} (default U{1..T})."""
    schedule, generator = inputs.schedule, inputs.generator
    gen_device = generator.device if generator is not None else y0.device
    b = y0.shape[0]
    if inputs.train_timesteps is None:
        t = torch.randint(1, schedule.T + 1, (b,), generator=generator, device=gen_device)
    else:
        pool = torch.tensor([int(v) for v in inputs.train_timesteps if v > 0], device=gen_device)
        t = pool[torch.randint(0, len(pool), (b,), generator=generator, device=gen_device)]
    eps = torch.randn(y0.shape, generator=generator, device=gen_device, dtype=torch.float32)
    ab = torch.tensor(schedule.alpha_bar)[t.cpu()]  # float64 (B,)
    view = (b,) + (1,) * (y0.ndim - 1)
    c_y0 = ab.sqrt().to(y0.device, torch.float32).view(view)
    c_eps = (1.0 - ab).sqrt().to(y0.device, torch.float32).view(view)
    eps = eps.to(y0.device)
    return c_y0 * y0.float() + c_eps * eps, eps, ab, c_y0, c_eps


def eps_loss(
    net: Network, cond: torch.Tensor, y0: torch.Tensor, inputs: LossInputs
) -> torch.Tensor:
    """The paper's loss: mean (eps_theta(x, sqrt(ab_t) y0 + sqrt(1-ab_t) eps, ab_t) - eps)^2."""
    y_t, eps, ab, _, _ = noisy_targets(y0, inputs)
    pred = net(cond, y_t, ab.to(y0.device, torch.float32))
    return ((pred.float() - eps) ** 2).mean()


def eps_denoise(out: torch.Tensor, y: torch.Tensor, ab: float) -> tuple[torch.Tensor, torch.Tensor]:
    """eps-prediction: x0 = (y_t - sqrt(1-ab) eps) / sqrt(ab). At ab_T ~ 6e-8 this divides the
    network's error by sqrt(ab_T) ~ 2.5e-4, which is why the first steps need x0 clipping."""
    x0 = (y - math.sqrt(1.0 - ab) * out) / math.sqrt(ab)
    return x0, out


# ----------------------------------------------------------------------------- v-prediction


def v_loss(net: Network, cond: torch.Tensor, y0: torch.Tensor, inputs: LossInputs) -> torch.Tensor:
    """v-prediction (Salimans & Ho 2022): mean (v_theta - v)^2 with
    v = sqrt(ab_t) eps - sqrt(1 - ab_t) y0. At ab_T ~ 0 the target is -y0, so the network's
    first call already estimates the clean image (the conditional mean), at every noise level
    without dividing by sqrt(ab)."""
    y_t, eps, ab, c_y0, c_eps = noisy_targets(y0, inputs)
    pred = net(cond, y_t, ab.to(y0.device, torch.float32))
    return ((pred.float() - (c_y0 * eps - c_eps * y0.float())) ** 2).mean()


def v_denoise(out: torch.Tensor, y: torch.Tensor, ab: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 = sqrt(ab) y_t - sqrt(1-ab) v and eps = sqrt(1-ab) y_t + sqrt(ab) v: well conditioned
    from pure noise (ab ~ 0) to the clean end (ab ~ 1)."""
    a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
    return a * y - s * out, s * y + a * out


# ----------------------------------------------------------------------------- regression


def predict_once(net: Network, cond: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
    """One-pass, CARE-like prediction with the same network: net(cond, 0, ab=1), float32."""
    co = out_channels_of(net, cond, out_channels)
    zeros = cond.new_zeros((cond.shape[0], co, *cond.shape[2:]), dtype=torch.float32)
    ones = cond.new_ones((cond.shape[0],), dtype=torch.float32)
    return net(cond, zeros, ones).float()


def regression_loss(
    net: Network, cond: torch.Tensor, y0: torch.Tensor, inputs: LossInputs
) -> torch.Tensor:
    """Mean L1 or L2 distance of :func:`predict_once` to the target y0 (B,Co,H,W)."""
    if inputs.distance not in LOSS_DISTANCES:
        raise BadInputError(
            describe(
                "regression loss", "distance", " or ".join(LOSS_DISTANCES), repr(inputs.distance)
            )
        )
    diff = predict_once(net, cond, y0.shape[1]) - y0.float()
    return diff.abs().mean() if inputs.distance == "l1" else (diff**2).mean()


def out_channels_of(net: Any, cond: torch.Tensor, out_channels: int | None = None) -> int:
    """Output channels: explicit, else net.out_channels or net.config.out_channels, else cond's."""
    if out_channels is None:
        out_channels = getattr(
            net, "out_channels", getattr(getattr(net, "config", None), "out_channels", None)
        )
    return int(cond.shape[1] if out_channels is None else out_channels)


# ----------------------------------------------------------------------------- the table

DIFFUSION = Objective(
    name="diffusion",
    summary="the paper's conditional DDPM: the network predicts the noise eps",
    sampled=True,
    loss=eps_loss,
    denoise=eps_denoise,
)
V_DIFFUSION = Objective(
    name="v",
    summary="conditional DDPM with v-prediction: a clean-image estimate from the first call",
    sampled=True,
    loss=v_loss,
    denoise=v_denoise,
    first_estimate=True,
)
REGRESSION = Objective(
    name="regression",
    summary="one-pass CARE-like regression with the same U-Net (L1 or L2 to the target)",
    sampled=False,
    loss=regression_loss,
)

OBJECTIVES: dict[str, Objective] = {o.name: o for o in (DIFFUSION, V_DIFFUSION, REGRESSION)}


def get_objective(
    name: object, where: object = "model", error: type[Exception] = IncompatibleModelError
) -> Objective:
    """The objective called ``name``; ``error`` names the choices otherwise."""
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise error(describe(where, "objective", " or ".join(OBJECTIVES), repr(name)))
    return OBJECTIVES[name]
