"""The options of ``bigrestore run``, in --help order and sections; ``plan`` and ``calibrate``
share the ones that apply to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bigrestore.commands.help import option

IO = "Input and output"
SAMPLING = "Sampling"
CLUSTER = "Where it runs"
ADVANCED = "Advanced"


def _sampler_choices() -> list[str]:
    from bigrestore.diffusion.samplers import SAMPLERS

    return list(SAMPLERS)


OPTIONS = [
    option(
        "-o",
        "--output",
        section=IO,
        type=click.Path(path_type=Path),
        default=None,
        help="Output store [default: INPUT.restored.zarr].",
    ),
    option(
        "--model",
        section=IO,
        type=click.Path(path_type=Path),
        default=None,
        help="Model directory (safetensors + JSON) [default: the bundled W2S model].",
    ),
    option(
        "--channels",
        section=IO,
        default=None,
        help="Comma-separated channel names or indices to restore.",
    ),
    option(
        "--resume",
        section=IO,
        is_flag=True,
        help="Continue an interrupted run (same model and settings).",
    ),
    option(
        "--allow-missing-chunks",
        section=IO,
        is_flag=True,
        help="Accept an input whose level 0 lacks chunks (read as zeros); refused by default.",
    ),
    option(
        "--overwrite",
        section=IO,
        is_flag=True,
        help="Replace an existing output (only one bigrestore wrote).",
    ),
    option(
        "--dtype",
        section=IO,
        type=click.Choice(["auto", "float32", "uint16", "uint8"]),
        default="auto",
        show_default=True,
        help="dtype of the mean: auto = the input's (uint8/uint16), else float32. Clipped pixels are "
        "counted and reported. std/entropy stay float32.",
    ),
    option(
        "--output-scale",
        section=IO,
        type=click.Choice(["input", "target"]),
        default="input",
        show_default=True,
        help="input: the input's intensity units, brightness preserved (a fit on a few restored tiles); "
        "target: the model's training target levels.",
    ),
    option(
        "--normalise-per",
        section=IO,
        type=click.Choice(["plane", "volume"]),
        default="plane",
        show_default=True,
        help="Where the percentiles (1st / 99.8th) that scale intensities for the network come from: "
        "each plane (one frame, slice and channel), as every training image was scaled, so dim and "
        "bright frames each meet the network as in training; or the whole volume per channel. The "
        "output stays in the input's units either way.",
    ),
    option(
        "--samples",
        section=SAMPLING,
        default=8,
        show_default=True,
        help="Samples per tile N: the output mean is their average (the paper's DDPM-avg), std and "
        "entropy their spread. Time grows with N; past 8 the bundled model's mean barely changes "
        "(paper: 15).",
    ),
    option(
        "--sampler",
        section=SAMPLING,
        type=click.Choice(_sampler_choices()),
        default="ddim",
        show_default=True,
        help="ddim (default: 8 steps, eta 1); ancestral = the paper's Eq. 7 with all T steps (slow, the reference); dpmpp_2m = DPM-Solver++(2M), deterministic; estimate = one clean-image estimate, re-noised to --start, then the remaining DDIM steps.",
    ),
    option(
        "--steps",
        section=SAMPLING,
        type=int,
        default=8,
        show_default=True,
        help="Network evaluations per sample (ancestral uses T). 8 suits v-models (the bundled "
        "one); models that predict the noise (objective diffusion) need about 50.",
    ),
    option(
        "--eta",
        section=SAMPLING,
        type=float,
        default=1.0,
        show_default=True,
        help="DDIM stochasticity: 1 = fresh noise at every step, as the paper's DDPM sampler (robust; samples differ, so std/entropy mean something), 0 = deterministic.",
    ),
    option(
        "--skip-background",
        section=SAMPLING,
        type=click.Choice(["auto", "off"]),
        default="auto",
        show_default=True,
        help="Give tiles of pure background one network call (a direct estimate of the clean tile) "
        "instead of N samples; needs a model that can estimate in one call (objective v, the "
        "bundled one). OUTPUT/skipped records where.",
    ),
    option(
        "--background",
        section=SAMPLING,
        type=float,
        default=None,
        help="Background threshold in the input's units (smoothed input below it = background) "
        "[default: estimated from the image].",
    ),
    option(
        "--shared-noise",
        section=SAMPLING,
        type=click.Choice(["none", "t", "z", "tz"]),
        default="none",
        show_default=True,
        help="Use the same sampling noise for a tile position in every frame (t) and/or slice (z): "
        "coherent time-lapses and stacks.",
    ),
    option(
        "--coverage",
        section=SAMPLING,
        type=click.Choice(["0.8", "0.9", "0.95"]),
        default="0.9",
        show_default=True,
        help="Level of the calibrated interval OUTPUT/lower, OUTPUT/upper (written when the model carries a "
        "calibration for these settings: bigrestore calibrate).",
    ),
    option(
        "--seed",
        section=SAMPLING,
        default=0,
        show_default=True,
        help="Run seed: noise is keyed by (seed, position, sample).",
    ),
    option(
        "--workers",
        section=CLUSTER,
        type=int,
        default=None,
        help="CPU Dask workers [default: usable cores / --threads-per-worker].",
    ),
    option(
        "--threads-per-worker",
        section=CLUSTER,
        type=int,
        default=1,
        show_default=True,
        help="torch threads in each worker; the output's bytes depend on it (recorded, kept by --resume).",
    ),
    option(
        "--gpus", section=CLUSTER, type=int, default=0, help="Use N GPUs: one Dask worker per GPU."
    ),
    option(
        "--scheduler",
        section=CLUSTER,
        default=None,
        help="Address of an existing Dask scheduler (e.g. from dask-jobqueue).",
    ),
    option(
        "--device",
        section=CLUSTER,
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help="Where each worker runs the network: auto = its GPU when torch sees one, else the CPU.",
    ),
    option(
        "--precision",
        section=CLUSTER,
        type=click.Choice(["auto", "fp32", "bf16"]),
        default="auto",
        show_default=True,
        help="Network arithmetic: auto = bf16 on GPUs and on CPUs with native bf16, else fp32.",
    ),
    option(
        "--spacing",
        section=ADVANCED,
        type=click.Choice(["uniform", "quadratic"]),
        default="uniform",
        show_default=True,
        help="Spacing of the sampler's steps over the T schedule steps.",
    ),
    option(
        "--antithetic/--independent",
        "antithetic",
        section=SAMPLING,
        default=True,
        show_default=True,
        help="Draw the samples in pairs with opposite noise (z, -z): their mean cancels the "
        "noise's odd-order part (+0.2 dB at the same cost on W2S); --independent: N streams.",
    ),
    option(
        "--flips/--no-flips",
        "flips",
        section=SAMPLING,
        default=True,
        show_default=True,
        help="Show the network each pair of samples in another mirror orientation of the tile "
        "(none, left-right, up-down, both) and mirror the result back: a better mean at the "
        "same cost; --no-flips: every sample as the tile lies.",
    ),
    option(
        "--clip/--no-clip",
        "clip_x0",
        section=ADVANCED,
        default=True,
        show_default=True,
        help="Clip each predicted clean image to the model's [-1, 1] range while sampling.",
    ),
    option(
        "--clip-bound",
        section=ADVANCED,
        type=float,
        default=1.0,
        show_default=True,
        help="With --clip: the bound in model space (each image's 1st/99.8th percentiles are -1/+1).",
    ),
    option(
        "--tile",
        section=ADVANCED,
        type=int,
        default=None,
        help="Tile size in pixels (YX) [default: twice the model's training patch size].",
    ),
    option(
        "--overlap",
        section=ADVANCED,
        type=int,
        default=None,
        help="Overlap of neighbouring tiles, pixels [default: tile/4].",
    ),
    option(
        "--batch",
        section=ADVANCED,
        type=int,
        default=None,
        help="Network batch (tiles x samples per call) [default: 8 on CPUs; on a GPU the largest that fits, "
        "measured once per worker].",
    ),
    option(
        "--chunk",
        section=ADVANCED,
        default=512,
        show_default=True,
        help="Output chunk size in YX (one block = one chunk).",
    ),
    option(
        "--save-samples",
        section=ADVANCED,
        is_flag=True,
        help="Also write every sample as OUTPUT/samples/NN.zarr.",
    ),
    option(
        "--series",
        section=ADVANCED,
        type=int,
        default=None,
        help="Image of a bioformats2raw store.",
    ),
    option(
        "--ngff-version",
        section=ADVANCED,
        type=click.Choice(["0.4", "0.5"]),
        default=None,
        help="0.5 (zarr v3) or 0.4 (zarr v2) [default: the input's version]; --resume keeps the "
        "store's.",
    ),
]


def settings_from_options(opts: dict[str, Any], names: tuple[str, ...]) -> Any:
    """RunSettings from the parsed options ``names`` (RunSettings fields given by options of
    the same name): ``run``, ``plan`` and ``calibrate`` build theirs the same way. ``steps`` is
    None for the ancestral sampler (all T steps); ``coverage`` comes as text from its choice."""
    from bigrestore.run.settings import run_settings

    values = {name: opts[name] for name in names}
    if "steps" in values and opts["sampler"] == "ancestral":
        values["steps"] = None
    if "coverage" in values:
        values["coverage"] = float(values["coverage"])
    return run_settings(**values)
