"""Model files: a directory with `model.safetensors` (weights) and `model.json` (everything else).

The JSON holds the format tag and version, the U-Net architecture, the training
objective, the noise schedule, the intensity normalisation, provenance and the
SHA-256 of the weights file (DESIGN.md, decision 6). Loading checks all of it and
never unpickles anything: weights are read with safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bigrestore.errors import (
    BadInputError,
    CannotCreateOutputError,
    IncompatibleModelError,
    MissingInputError,
    describe,
)
from bigrestore.model.unet import ConditionalUNet, UNetConfig

log = logging.getLogger(__name__)

FORMAT = "bigrestore-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
OBJECTIVES = ("diffusion", "regression")
# Keys written by save_model itself, and the keys a caller's `spec` may add.
CORE_KEYS = ("format", "format_version", "unet", "weights_sha256")
SPEC_KEYS = ("objective", "schedule", "normalization", "provenance")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _check_spec(path: object, meta: dict[str, Any], error: type[Exception]) -> None:
    """Check the caller-supplied part of the metadata (shared by save and load)."""
    unknown = sorted(set(meta) - set(CORE_KEYS) - set(SPEC_KEYS))
    if unknown:
        raise error(
            describe(path, unknown[0], f"one of {sorted(CORE_KEYS + SPEC_KEYS)}", "an unknown key")
        )
    if meta.get("objective") not in OBJECTIVES:
        raise error(
            describe(path, "objective", " or ".join(OBJECTIVES), repr(meta.get("objective")))
        )
    if meta["objective"] == "diffusion" and not isinstance(meta.get("schedule"), dict):
        raise error(
            describe(
                path, "schedule", "a mapping for a diffusion model", repr(meta.get("schedule"))
            )
        )
    for key in ("schedule", "normalization", "provenance"):
        if key in meta and not isinstance(meta[key], dict):
            raise error(describe(path, key, "a mapping", type(meta[key]).__name__))


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


def write_atomic(target: Path, write: Any) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``target``, fsync it, rename it into
    place and fsync the directory, so ``target`` is either the old or the new complete file."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the usual umask-derived mode so models and
        # checkpoints on a shared disk are readable by other users and by cluster workers.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_model(directory: Path, net: ConditionalUNet, spec: dict[str, Any]) -> str:
    """Write `net` and `spec` as a model directory; return its model_hash.

    `spec` holds "objective" ("diffusion" needs a "schedule" mapping, e.g.
    {"T": 200, "s": 0.008}) and optionally "normalization" and "provenance"
    mappings; it must be JSON-serialisable. All parameters and buffers (including
    the Fourier frequencies and phases) are stored as contiguous CPU tensors in
    their dtype. Each file is written to a temporary name and renamed, weights
    first, so model.json never describes a half-written weights file.
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
    """Read and validate model.json; migrate older format versions here when there are any."""
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
    _check_spec(path, meta, IncompatibleModelError)
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


def model_hash(path: Path) -> str:
    """SHA-256 identifying a model: of its canonical JSON, which includes the weights' SHA-256.

    Cheap (reads model.json only); it changes when the weights, the architecture, the
    schedule or the normalisation change. Equals the value save_model returned.
    """
    return hashlib.sha256(_canonical(_read_meta(_model_dir(path)))).hexdigest()


def load_model(
    path: Path, device: str | torch.device = "cpu"
) -> tuple[ConditionalUNet, dict[str, Any]]:
    """Load a model directory (or its model.json) onto `device`, in eval mode.

    Returns the network and the full metadata dict. The weights file must match the
    recorded SHA-256, and its tensors the architecture in names, shapes and dtypes.
    Raises MissingInputError if `path` does not exist and IncompatibleModelError for
    anything else that is wrong.
    """
    directory = _model_dir(Path(path))
    meta = _read_meta(directory)
    config = UNetConfig.from_dict(meta["unet"])
    weights = directory / WEIGHTS_FILE
    try:
        digest = sha256_file(weights)
    except OSError as e:
        raise IncompatibleModelError(describe(weights, "file", "the model weights", e)) from e
    if digest != meta["weights_sha256"]:
        raise IncompatibleModelError(describe(weights, "sha256", meta["weights_sha256"], digest))
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise IncompatibleModelError(describe(weights, "file", "safetensors weights", e)) from e

    net = ConditionalUNet(config)
    expected = net.state_dict()
    for key in sorted(set(expected) | set(state)):
        if key not in state:
            raise IncompatibleModelError(describe(weights, key, "a stored tensor", "missing"))
        if key not in expected:
            raise IncompatibleModelError(
                describe(weights, key, "a tensor of the architecture", "an unknown tensor")
            )
        want, got = expected[key], state[key]
        if want.shape != got.shape or want.dtype != got.dtype:
            raise IncompatibleModelError(
                describe(
                    weights,
                    key,
                    f"{want.dtype} {tuple(want.shape)}",
                    f"{got.dtype} {tuple(got.shape)}",
                )
            )
    net.load_state_dict(state, strict=True)
    net.to(device).eval()
    return net, meta
