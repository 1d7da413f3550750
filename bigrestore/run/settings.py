"""The settings of one ``bigrestore run``: a validated, frozen schema, recorded in the manifest.

Everything that changes the output's bytes is here (and ``--resume`` refuses a different
value); where the run happens (the cluster) is not, except the threads per worker, which the
run store records beside these settings.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from bigrestore.checks import validate_model
from bigrestore.devices import PRECISIONS
from bigrestore.diffusion.samplers import SamplerSettings
from bigrestore.errors import UsageError

OUTPUT_DTYPES = ("auto", "float32", "uint16", "uint8")
OUTPUT_SCALES = ("input", "target")
#: Largest run seed: noise keys hold signed 64-bit integers.
MAX_SEED = 2**63 - 1

PositiveInt = Annotated[StrictInt, Field(ge=1)]


class RunSettings(BaseModel):
    """User-facing settings of a run; all of them are recorded in the run manifest.

    - ``samples``: N samples per tile (the mean is DDPM-avg, std/entropy their spread).
    - ``sampling``: the sampler and its settings (bigrestore.diffusion.samplers).
    - ``tile``/``overlap``: pixels; None = twice the model's training patch / a quarter tile.
    - ``seed``: the run seed of the position-keyed noise.
    - ``batch``: network batch (tiles x samples) per call; padded so results do not depend on it.
      None = auto: 8 on a CPU, the largest that fits on a GPU (bigrestore.run.batching).
    - ``dtype``/``output_scale``: the mean's dtype (auto: the input's integer dtype, else
      float32) and intensity scale: ``input`` (the input's units, fitted so that brightness
      is preserved: bigrestore.run.scale) or ``target`` (the model's training targets).
    - ``chunk``/``chunks_per_block``: output chunk side in YX and chunks per block side.
    - ``precision``: network arithmetic (bigrestore.devices.autocast_dtype).
    - ``skip_background``/``background``: give tiles that are pure background one first
      estimate instead of N samples (auto: where the model has a first estimate and the image
      a clear background; threshold estimated, or ``background`` in the input's units).
    - ``shared_noise``: the same sampling noise for the same tile position along t and/or z
      (coherent time-lapses and stacks) instead of independent noise per plane.
    - ``coverage``: the level of the calibrated interval (lower/upper) written when the
      model carries a calibration for these settings.
    - ``normalise_per``: where the 1st / 99.8th percentiles that map intensities into model
      space come from: each ``plane`` (one t, z and channel; how every training image is
      normalised, so planes of different brightness each meet the network as in training) or
      the whole ``volume`` per channel (one map for all planes). Never per tile or block.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: PositiveInt = 8
    sampling: SamplerSettings = SamplerSettings()
    tile: Annotated[StrictInt, Field(ge=8)] | None = None
    overlap: Annotated[StrictInt, Field(ge=0)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] = 0
    batch: PositiveInt | None = None
    dtype: Literal["auto", "float32", "uint16", "uint8"] = "auto"
    output_scale: Literal["input", "target"] = "input"
    chunk: Annotated[StrictInt, Field(ge=8)] = 512
    chunks_per_block: PositiveInt = 1
    save_samples: StrictBool = False
    coverage: Literal[0.8, 0.9, 0.95] = 0.9
    skip_background: Literal["auto", "off"] = "auto"
    background: Annotated[float, Field(allow_inf_nan=False)] | None = None
    shared_noise: Literal["none", "t", "z", "tz"] = "none"
    precision: Literal[PRECISIONS] = "auto"  # type: ignore[valid-type]
    normalise_per: Literal["plane", "volume"] = "plane"

    def resolved(self, train_resolution: int, input_dtype: Any = "float32") -> RunSettings:
        """Tile defaults to twice the model's training patch size, overlap to a quarter tile.

        Why twice: a tile's border pixels see zero padding instead of image, and with tiles of
        the training size much of every tile is border. On W2S 256² crops (bundled model, 4
        samples, benchmarks/tile_w2s.py) tiles of 128 scored 1.6 dB PSNR above tiles of 64 and
        0.3 dB above one 256 tile per crop, whose bottleneck attention spans 16 times the
        area it was trained on."""
        tile = self.tile or 2 * train_resolution
        overlap = self.overlap if self.overlap is not None else tile // 4
        dtype = self.dtype
        if dtype == "auto":
            name = str(input_dtype)
            dtype = name if name in ("uint8", "uint16") else "float32"
        return self.model_copy(update={"tile": tile, "overlap": overlap, "dtype": dtype})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def calibration_key(self) -> dict[str, Any]:
        """What a calibration is made for (and only applies to): the sampler's settings, the
        number of samples, the tiling (resolved settings) and the normalisation."""
        return {
            "samples": self.samples,
            **self.sampling.model_dump(),
            "tile": self.tile,
            "overlap": self.overlap,
            "normalise_per": self.normalise_per,
        }

    def changed(self, **changes: Any) -> RunSettings:
        """A validated copy with some settings changed (sampler settings may be given flat)."""
        flat = {k: v for k, v in self.model_dump().items() if k != "sampling"}
        return run_settings(**{**flat, **self.sampling.model_dump(), **changes})


#: Sampler settings that may also be given flat (as on the command line).
SAMPLER_KEYS = tuple(SamplerSettings.model_fields)


def run_settings(where: str = "run settings", **values: Any) -> RunSettings:
    """Build RunSettings from keyword values (e.g. the command line), refusing bad ones with a
    UsageError that names the option, expected and found. The sampler's settings may be given
    flat (``sampler=``, ``steps=``, ...) or as ``sampling=``."""
    sampling = dict(values.pop("sampling", {}) or {})
    sampling.update({k: values.pop(k) for k in SAMPLER_KEYS if k in values})
    data = {
        **values,
        "sampling": validate_model(SamplerSettings, sampling, where, UsageError, "sampling."),
    }
    return validate_model(RunSettings, data, where, UsageError)


def bundled_model_path() -> Path:
    """The model shipped inside the package (used when ``--model`` is not given)."""
    return Path(str(importlib.resources.files("bigrestore") / "data" / "model"))


def default_output(input_path: Path) -> Path:
    name = input_path.name.rstrip("/")
    stem = name[: -len(".zarr")] if name.endswith(".zarr") else name
    return input_path.with_name(stem + ".restored.zarr")
