"""Model files: a directory with `model.safetensors` (weights) and `model.json` (everything else).

The JSON holds the format tag and version, the U-Net architecture, the training objective, the
noise schedule, the intensity normalisation, provenance and the SHA-256 of the weights file
(DESIGN.md, decision 6). :func:`read_model` checks all of it, including that the weights
file's tensor shapes match the architecture, before a single weight is allocated, and never
unpickles anything: weights are read with safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from bigrestore.checks import validate_model
from bigrestore.diffusion.calibration import full_key
from bigrestore.diffusion.objectives import Objective, get_objective
from bigrestore.diffusion.schedule import Schedule
from bigrestore.errors import (
    BadInputError,
    CannotCreateOutputError,
    IncompatibleModelError,
    MissingInputError,
    describe,
)
from bigrestore.intensity import Stats
from bigrestore.io.atomic import sha256_file, write_atomic
from bigrestore.model.unet import ConditionalUNet, UNetConfig

log = logging.getLogger(__name__)

FORMAT = "bigrestore-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
# Keys written by save_model itself, and the keys a caller's `spec` may add.
CORE_KEYS = ("format", "format_version", "unet", "weights_sha256")
SPEC_KEYS = ("objective", "schedule", "normalization", "provenance", "calibration")

Finite = Annotated[float, Field(allow_inf_nan=False)]
Percentile = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]


class Levels(BaseModel):
    """Intensities that map to -1 (``low``) and +1 (``high``) in model space."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    low: Finite
    high: Finite

    @model_validator(mode="after")
    def _ordered(self) -> Levels:
        if not self.high > self.low:
            raise ValueError(f"high > low, found low {self.low}, high {self.high}")
        return self

    def stats(self) -> Stats:
        return Stats(self.low, self.high)


class Normalization(BaseModel):
    """How intensities enter model space: per-image percentiles p_low/p_high ↦ -1/+1, and the
    training targets' typical levels (``target``), used to map a restoration back.
    ``target_frame`` (bigrestore.train.config): ``low`` means the network outputs the noise-free
    input in the input's model space, so ``output_scale input`` returns the input's units
    exactly; ``own`` (older files) means it outputs the target's percentile frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: Literal["percentile"] = "percentile"
    p_low: Percentile = 1.0
    p_high: Percentile = 99.8
    target_frame: Literal["own", "low"] = "own"
    target: Levels | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Normalization:
        if not self.p_low < self.p_high:
            raise ValueError(f"p_low < p_high, found {self.p_low} and {self.p_high}")
        return self


@dataclass(frozen=True)
class ModelInfo:
    """A model file as read and checked: typed parts, and ``meta``, the JSON as stored."""

    directory: Path
    meta: dict[str, Any]
    unet: UNetConfig
    objective: Objective
    schedule: Schedule
    normalization: Normalization

    @property
    def weights_sha256(self) -> str:
        return str(self.meta["weights_sha256"])

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.meta.get("provenance", {}))

    @property
    def calibrations(self) -> list[dict[str, Any]]:
        """The calibrations stored with the model (bigrestore.diffusion.calibration)."""
        return list(self.meta.get("calibration", {}).get("entries", []))


def _canonical(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _check_spec(
    path: object, meta: dict[str, Any], error: type[Exception]
) -> tuple[Objective, Schedule, Normalization]:
    """Check the caller-supplied part of the metadata (shared by save and load)."""
    unknown = sorted(set(meta) - set(CORE_KEYS) - set(SPEC_KEYS))
    if unknown:
        raise error(
            describe(path, unknown[0], f"one of {sorted(CORE_KEYS + SPEC_KEYS)}", "an unknown key")
        )
    objective = get_objective(meta.get("objective"), path, error)
    if objective.sampled and not isinstance(meta.get("schedule"), dict):
        raise error(
            describe(
                path,
                "schedule",
                f"a mapping for a {objective.name} model",
                repr(meta.get("schedule")),
            )
        )
    for key in ("schedule", "normalization", "provenance", "calibration"):
        if key in meta and not isinstance(meta[key], dict):
            raise error(describe(path, key, "a mapping", type(meta[key]).__name__))
    try:
        schedule = Schedule.from_dict(meta.get("schedule", {}))
    except IncompatibleModelError as err:
        raise error(f"{path}: {err}") from err
    normalization = validate_model(
        Normalization, meta.get("normalization", {}), path, error, "normalization."
    )
    return objective, schedule, normalization


def _model_dir(path: Path) -> Path:
    """Directory of a model given as the directory or its model.json."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(describe(path, "model", "an existing model directory", "nothing"))
    if path.is_dir():
        return path
    if path.name == CONFIG_FILE:
        return path.parent
    raise IncompatibleModelError(
        describe(path, "model", f"a directory or its {CONFIG_FILE}", "another file")
    )


def save_model(directory: Path, net: ConditionalUNet, spec: dict[str, Any]) -> str:
    """Write `net` and `spec` as a model directory; return its model_hash.

    `spec` holds "objective" (a sampled objective needs a "schedule" mapping, e.g.
    {"T": 200, "s": 0.008}) and optionally "normalization", "provenance" and "calibration"
    mappings; it must be JSON-serialisable. All parameters and buffers (including the Fourier
    frequencies and phases) are stored as contiguous CPU tensors in their dtype. Each file is
    written to a temporary name and renamed, weights first, so model.json never describes a
    half-written weights file.
    """
    directory = Path(directory)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "unet": net.config.to_dict(),
    }
    clash = sorted(set(spec) & set(CORE_KEYS))
    if clash:
        raise BadInputError(
            describe(directory, clash[0], "a key set by save_model, not by spec", "a spec key")
        )
    meta.update(spec)
    _check_spec(directory, meta, BadInputError)
    try:
        _canonical(meta)
    except (TypeError, ValueError) as e:
        raise BadInputError(describe(directory, "spec", "JSON-serialisable values", e)) from e

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(
            directory / WEIGHTS_FILE,
            # One metadata key only: safetensors writes its metadata map in hash order,
            # so two keys would make the file bytes (and the model hash) vary per save.
            lambda p: save_file(tensors, str(p), metadata={"format": f"{FORMAT}/{FORMAT_VERSION}"}),
        )
        meta["weights_sha256"] = sha256_file(directory / WEIGHTS_FILE)
        text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
        write_atomic(directory / CONFIG_FILE, lambda p: p.write_text(text, encoding="utf-8"))
    except OSError as e:
        raise CannotCreateOutputError(
            describe(directory, "model", "a writable directory", e)
        ) from e
    log.info("saved model to %s (%d tensors)", directory, len(tensors))
    return hashlib.sha256(_canonical(json.loads(text))).hexdigest()


def _read_meta(directory: Path) -> dict[str, Any]:
    """Read model.json and check its frame; migrate older format versions here when there are any."""
    path = directory / CONFIG_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise IncompatibleModelError(
            describe(path, "file", "a model config", "no such file")
        ) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IncompatibleModelError(describe(path, "file", "readable JSON", e)) from e
    if not isinstance(meta, dict):
        raise IncompatibleModelError(describe(path, "top level", "a mapping", type(meta).__name__))
    if meta.get("format") != FORMAT:
        raise IncompatibleModelError(describe(path, "format", FORMAT, repr(meta.get("format"))))
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise IncompatibleModelError(
            describe(path, "format_version", FORMAT_VERSION, repr(version))
        )
    missing = [k for k in CORE_KEYS if k not in meta]
    if missing:
        raise IncompatibleModelError(describe(path, missing[0], "present", "missing"))
    digest = meta["weights_sha256"]
    if not (
        isinstance(digest, str)
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest)
    ):
        raise IncompatibleModelError(
            describe(path, "weights_sha256", "64 lowercase hex digits", repr(digest))
        )
    return meta


def _check_weights_shapes(weights: Path, config: UNetConfig) -> None:
    """Compare the weights file's tensor names/shapes/dtypes with the architecture, reading
    only the safetensors header and building the network on the meta device (no memory), so an
    edited architecture (say base_channels 2048) is refused before anything is allocated."""
    with torch.device("meta"):
        expected = {
            k: (tuple(v.shape), v.dtype) for k, v in ConditionalUNet(config).state_dict().items()
        }
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = {
                k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()
            }
    except (SafetensorError, OSError, ValueError) as e:
        raise IncompatibleModelError(describe(weights, "file", "safetensors weights", e)) from e
    names = {
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F64": torch.float64,
    }
    for key in sorted(set(expected) | set(stored)):
        if key not in stored:
            raise IncompatibleModelError(describe(weights, key, "a stored tensor", "missing"))
        if key not in expected:
            raise IncompatibleModelError(
                describe(weights, key, "a tensor of the architecture", "an unknown tensor")
            )
        (want_shape, want_dtype), (got_shape, got_dtype) = expected[key], stored[key]
        if want_shape != got_shape or names.get(got_dtype) != want_dtype:
            raise IncompatibleModelError(
                describe(weights, key, f"{want_dtype} {want_shape}", f"{got_dtype} {got_shape}")
            )


def read_model(path: Path) -> ModelInfo:
    """Read and check a model directory (or its model.json) without loading the weights: the
    JSON, the weights' SHA-256 and that the weights' shapes match the architecture."""
    directory = _model_dir(Path(path))
    meta = _read_meta(directory)
    where = directory / CONFIG_FILE
    objective, schedule, normalization = _check_spec(where, meta, IncompatibleModelError)
    config = UNetConfig.from_dict(meta["unet"])
    weights = directory / WEIGHTS_FILE
    try:
        digest = sha256_file(weights)
    except OSError as e:
        raise IncompatibleModelError(describe(weights, "file", "the model weights", e)) from e
    if digest != meta["weights_sha256"]:
        raise IncompatibleModelError(describe(weights, "sha256", meta["weights_sha256"], digest))
    _check_weights_shapes(weights, config)
    return ModelInfo(directory, meta, config, objective, schedule, normalization)


def model_hash(path: Path) -> str:
    """SHA-256 identifying a model: of its canonical JSON, which includes the weights' SHA-256.

    Cheap (reads model.json only); it changes when the weights, the architecture, the
    schedule or the normalisation change. Equals the value save_model returned.
    """
    return hashlib.sha256(_canonical(_read_meta(_model_dir(path)))).hexdigest()


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[ConditionalUNet, ModelInfo]:
    """Load a model directory (or its model.json) onto `device`, in eval mode.

    Everything is checked by :func:`read_model` first. Raises MissingInputError if `path` does
    not exist and IncompatibleModelError for anything else that is wrong.
    """
    info = read_model(path)
    net = ConditionalUNet(info.unet)
    net.load_state_dict(read_weights(info), strict=True)
    net.to(device).eval()
    return net, info


def read_weights(info: ModelInfo) -> dict[str, torch.Tensor]:
    """The checked model's weights (safetensors, finite), on the CPU."""
    weights = info.directory / WEIGHTS_FILE
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise IncompatibleModelError(describe(weights, "file", "safetensors weights", e)) from e
    bad = [
        k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise IncompatibleModelError(describe(weights, bad[0], "finite values", "NaN or inf"))
    return state


def parameter_count(config: UNetConfig) -> int:
    """Parameters of the architecture, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(math.prod(p.shape) for p in ConditionalUNet(config).parameters())


def write_calibration(path: Path, entry: dict[str, Any], out: Path | None = None) -> Path:
    """Store a calibration (bigrestore.diffusion.calibration) in a model's JSON, replacing one
    made for the same key; the weights are untouched. With ``out`` the model is copied there
    first (the original stays as it was). Returns the model directory written."""
    info = read_model(path)
    target = Path(out) if out is not None else info.directory
    if out is not None:
        if target.exists() and any(target.iterdir()):
            raise CannotCreateOutputError(
                describe(target, "--out", "a new or empty directory", "a non-empty one")
            )
        target.mkdir(parents=True, exist_ok=True)
        weights = (info.directory / WEIGHTS_FILE).read_bytes()
        write_atomic(target / WEIGHTS_FILE, lambda p: p.write_bytes(weights))
    meta = dict(info.meta)
    made_for = full_key(entry["key"])
    entries = [e for e in info.calibrations if full_key(e.get("key", {})) != made_for]
    meta["calibration"] = {"entries": [*entries, entry]}
    try:
        text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
        write_atomic(target / CONFIG_FILE, lambda p: p.write_text(text, encoding="utf-8"))
    except OSError as e:
        raise CannotCreateOutputError(
            describe(target, "model", "a writable model directory", e)
        ) from e
    return target
