"""Registration of whole stacks and volumes, and the padding mask (paper suppl. S1.1).

:func:`register_stack` estimates one rigid transform per plane (or per volume) on a reference
channel with :func:`bigrestore.register.rigid.register_rigid` and carries it over to the other
channels with :func:`bigrestore.register.rigid.apply_rigid`, so the channels stay aligned.
:func:`apply_padding_mask` reproduces the registration padding on the reference image.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bigrestore.errors import BadInputError, UsageError, describe
from bigrestore.register.rigid import RigidResult, apply_rigid, register_rigid

log = logging.getLogger(__name__)


@dataclass
class StackResult:
    """Registration of a stack: the whole registered stack plus one result per transform.

    registered: float32, fixed's shape; valid_mask: bool, fixed's shape (the mask
    of the plane/volume the pixel belongs to, repeated over channels).
    results: one RigidResult per estimated transform, computed on the reference
    channel; indices: for each, its index over the non-channel, non-registered
    axes (e.g. (t, z) in "plane" mode, (t,) in "volume" mode).
    """

    registered: np.ndarray
    valid_mask: np.ndarray
    results: list[RigidResult] = field(default_factory=list)
    indices: list[tuple[int, ...]] = field(default_factory=list)


def apply_padding_mask(reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Copy of ``reference`` with the registration padding reproduced (outside ``mask`` -> 0).

    Paper suppl. S1.1: the zero border that resampling leaves in the registered
    low-SNR image is copied onto the high-SNR reference. Keeps the dtype.
    """
    if reference.shape != mask.shape:
        raise BadInputError(describe("padding mask", "shape", reference.shape, mask.shape))
    return np.where(mask, reference, np.zeros((), dtype=reference.dtype))


def _check_stack(
    moving: np.ndarray,
    fixed: np.ndarray,
    axes: str,
    mode: str,
    reference_channel: int,
    spacing: tuple[float, ...] | None,
) -> str:
    """Refuse a stack, axes, mode, spacing or reference channel register_stack cannot use;
    the registered axes ("yx" or "zyx")."""
    if mode not in ("plane", "volume"):
        raise UsageError(describe("register_stack", "mode", "'plane' or 'volume'", mode))
    if moving.shape != fixed.shape:
        raise BadInputError(describe("register_stack", "shape", fixed.shape, moving.shape))
    if (
        len(axes) != fixed.ndim
        or len(set(axes)) != len(axes)
        or not set(axes) <= set("tczyx")
        or not axes.endswith("yx")
    ):
        raise BadInputError(
            describe(
                "register_stack",
                "axes",
                f"{fixed.ndim} distinct letters of 'tczyx' ending in 'yx'",
                axes,
            )
        )
    registered_axes = "yx" if mode == "plane" else "zyx"
    if not axes.endswith(registered_axes):
        raise UsageError(
            describe(
                "register_stack", "axes", f"trailing '{registered_axes}' for mode {mode!r}", axes
            )
        )
    if spacing is not None and len(spacing) != len(axes):
        raise BadInputError(describe("register_stack", "spacing", f"{len(axes)} values", spacing))
    n_channels = fixed.shape[axes.index("c")] if "c" in axes else 1
    if not 0 <= reference_channel < n_channels:
        raise UsageError(
            describe(
                "register_stack", "reference_channel", f"0..{n_channels - 1}", reference_channel
            )
        )
    return registered_axes


def _selection(axes: str, outer: str, index: tuple[int, ...], channel: int) -> tuple[Any, ...]:
    """Index of one plane/volume of ``channel``: ``index`` over the ``outer`` axes."""
    sel: list[Any] = [slice(None)] * len(axes)
    for a, i in zip(outer, index, strict=True):
        sel[axes.index(a)] = i
    if "c" in axes:
        sel[axes.index("c")] = channel
    return tuple(sel)


def register_stack(
    moving: np.ndarray,
    fixed: np.ndarray,
    axes: str,
    mode: str = "plane",
    reference_channel: int = 0,
    spacing: tuple[float, ...] | None = None,
    max_iterations: int = 200,
    metric: str = "correlation",
) -> StackResult:
    """Register a stack plane by plane ("plane": every YX plane) or as volumes ("volume": ZYX).

    ``axes`` names the array axes (letters of "tczyx", e.g. "tcyx", "czyx"); the
    registered axes (yx, or zyx in "volume" mode) must be the last ones. One
    transform is estimated per index of the remaining non-channel axes (t, and z
    in "plane" mode) on ``reference_channel`` and applied to every channel, so
    the channels stay aligned with each other. ``spacing`` gives one physical
    pixel size per axis of ``axes`` (NGFF scale); only the registered axes' are used.
    """
    registered_axes = _check_stack(moving, fixed, axes, mode, reference_channel, spacing)
    n_channels = fixed.shape[axes.index("c")] if "c" in axes else 1
    sub_spacing = None if spacing is None else tuple(spacing[-len(registered_axes) :])
    outer = "".join(a for a in axes[: -len(registered_axes)] if a != "c")
    registered = np.zeros(fixed.shape, dtype=np.float32)
    valid = np.zeros(fixed.shape, dtype=bool)
    out = StackResult(registered=registered, valid_mask=valid)
    for index in itertools.product(*(range(fixed.shape[axes.index(a)]) for a in outer)):
        ref = _selection(axes, outer, index, reference_channel)
        result = register_rigid(moving[ref], fixed[ref], sub_spacing, max_iterations, metric)
        log.debug("registered %s=%s: %s", outer, index, result.parameters)
        for channel in range(n_channels):
            sel = _selection(axes, outer, index, channel)
            if channel == reference_channel:
                registered[sel] = result.registered
            else:
                registered[sel] = apply_rigid(moving[sel], result.matrix)[0]
            valid[sel] = result.valid_mask
        out.results.append(result)
        out.indices.append(index)
    return out
