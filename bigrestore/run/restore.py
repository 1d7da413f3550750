"""``restore()``, the Python API behind ``bigrestore run``: plan → store → blocks → finish.

Everything is validated by :func:`~bigrestore.run.plan.make_plan` before any write. The output
store is then locked for the whole run, created (or resumed), the blocks run on Dask, and the
pyramids, NGFF metadata and the ``complete`` manifest are written last (DESIGN.md decision 4).
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigrestore import __version__
from bigrestore.errors import (
    BigrestoreError,
    IOFailure,
    MissingInputError,
    ResumableInterrupt,
    UsageError,
)
from bigrestore.intensity import Stats
from bigrestore.io.ngff import NGFF_VERSIONS
from bigrestore.io.paths import check_output, written_by_bigrestore
from bigrestore.io.runstore import RunStore, output_lock, refuse_if_locked
from bigrestore.io.write import PYRAMID_MIN_SIDE
from bigrestore.run.cluster import ClusterSpec, check_gpus, open_client, run_blocks
from bigrestore.run.notes import (
    background_note,
    calibration_note,
    entropy_note,
    fill_note,
    plateau_levels,
    rounding_note,
    sampling_note,
    saturation_note,
)
from bigrestore.run.settings import RunSettings, default_output
from bigrestore.run.tasks import BlockTask

if TYPE_CHECKING:
    from bigrestore.run.plan import RunPlan

Progress = Callable[[dict[str, Any], int, int], None]


@dataclass
class RestoreResult:
    """Where the outputs are and what the run measured."""

    output: Path
    blocks_total: int
    blocks_done_now: int
    tiles: int
    seconds: float
    clipped: int
    manifest: dict[str, Any] = field(default_factory=dict)


#: The per-block counts a run sums over its blocks (bigrestore.run.block.assemble_block).
COUNTED = (
    "tiles",
    "evaluations",
    "skipped",
    "entropy_saturated",
    "saturated_input",
    "fill_input",
    "pixels",
)


def run_record(
    plan: RunPlan, ngff_version: str, cluster: ClusterSpec, series: int | None
) -> dict[str, Any]:
    """What identifies a run's results: ``--resume`` refuses a store whose record differs
    (``saturated_levels`` / ``fill_levels`` only where the input has such plateaus: blocks
    normalised with and without the plateau rules must not share one output)."""
    record = {
        "input": str(plan.input_path.resolve()),
        "series": series,
        "model": str(plan.model.directory.resolve()),
        "model_sha256": plan.model.weights_sha256,
        "settings": plan.settings.to_dict(),
        "channels": plan.channels,
        "ngff_version": ngff_version,
        "threads_per_worker": cluster.torch_threads(),
        "version": __version__,
    }
    for kind, key in (("saturated", "saturated_levels"), ("filled", "fill_levels")):
        levels = plateau_levels(plan, kind)
        if levels:
            record[key] = {c: sorted(set(found)) for c, found in levels.items()}
    return record


def settle_output_scale(
    plan: RunPlan, output: Path, resume: bool, device: str, threads: int
) -> tuple[RunPlan, dict[str, Any]]:
    """The map from model space to the output's units. ``input`` scale: fitted on a few
    restored tiles (bigrestore.run.scale), or, resuming, the fit the run started with (read
    from its manifest, so every block of one output shares one map); ``target``: the model's
    training target levels."""
    from dataclasses import replace as replace_plan

    if plan.settings.output_scale != "input":
        return plan, {"scale": plan.settings.output_scale}
    previous = RunStore(output, "0.5").manifest().get("output_scale", {}) if resume else {}
    from bigrestore.run.scale import fit_output_scale, with_fit

    if previous.get("space") == "model":
        return with_fit(plan, previous), previous
    if previous.get("statistics"):  # a run started before fits were kept in model space
        stats = tuple(Stats.from_dict(d) for d in previous["statistics"])
        return replace_plan(plan, job=replace_plan(plan.job, output_stats=(stats,))), previous
    import torch

    from bigrestore.devices import pick_device
    from bigrestore.run.block import load_cached_model

    chosen = pick_device(device)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))  # the workers' thread count: the same tile values
    try:
        net = load_cached_model(plan.job.model_path, plan.job.model_sha256, chosen)
        plan, fit = fit_output_scale(plan, net, chosen)
    finally:
        torch.set_num_threads(before)
    return plan, {"scale": "input", **fit}


def check_paths(input_path: Path, output: Path, resume: bool, overwrite: bool) -> None:
    """Output location checks that need nothing but the paths (before the plan's reads)."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    refuse_if_locked(output)
    if resume:
        if not output.exists():
            raise MissingInputError(f"{output}: nothing to resume (output does not exist)")
        check_output(
            output, overwrite=True, inputs=[input_path]
        )  # inside/around the input, writable
        if not written_by_bigrestore(output) and RunStore.existing_version(output) is not None:
            raise UsageError(f"{output}: not a bigrestore output; cannot resume it")
    else:
        check_output(output, overwrite, inputs=[input_path], kind="run")


def resolve_version(
    output: Path, resume: bool, ngff_version: str | None, input_version: str | None = None
) -> str:
    """The NGFF version to write: the store's own on resume (a different explicit one is
    refused by the manifest check), else the requested one, else the input's when it is one
    we write (a 0.4 input is read by 0.4 viewers; its outputs should be too), else 0.5."""
    existing = RunStore.existing_version(output) if resume else None
    inherited = input_version if input_version in NGFF_VERSIONS else None
    version = ngff_version or existing or inherited or "0.5"
    if version not in NGFF_VERSIONS:
        raise UsageError(
            f"--ngff-version: expected one of {', '.join(NGFF_VERSIONS)}, found {version}"
        )
    return version


def open_store(
    plan: RunPlan, output: Path, record: dict[str, Any], resume: bool
) -> tuple[RunStore, list[BlockTask]]:
    """Create (or, resuming, check and complete) the store; the blocks still to compute."""
    store = RunStore(output, record["ngff_version"])
    if resume and store.existing_version(output) is not None:
        store.check_resume(record)
    elif not resume:
        store.clear()  # --overwrite of our own output (check_paths allowed it); a new store is empty
    store.ensure_layout(record, plan.level0, plan.done_shape)
    done = store.done_mask()
    return store, [t for t in plan.tasks if not done[t.done_index]]


def resume_command(input_path: Path, output: Path) -> str:
    """The command that continues this run: the same arguments with --resume."""
    argv = sys.argv[1:]
    if argv[:1] == ["run"]:  # started as `bigrestore run ...` (or python -m bigrestore.cli run ...)
        kept = [a for a in argv if a not in ("--overwrite", "--resume")]
        return "bigrestore " + shlex.join(kept + ["--resume"])
    return f"bigrestore run {shlex.quote(str(input_path))} -o {shlex.quote(str(output))} --resume (same model and settings)"


def execute(
    plan: RunPlan,
    tasks: list[BlockTask],
    client: Any,
    progress: Progress | None,
    tile_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the blocks on the Dask ``client`` (border tiles computed once and shared); returns
    totals (tiles, evaluations, clipped, ran_on). ``progress(record, blocks_done, blocks)``
    follows blocks, ``tile_progress(tiles_done, tiles)`` the tiles (for an early ETA)."""
    from bigrestore.run.tasks import SharedTiles

    totals: dict[str, Any] = {key: 0 for key in ("clipped", "pinned", "done", *COUNTED)}
    totals.update(ran_on=set(), batch=set())
    shared = SharedTiles.plan(plan.job, plan.tasks, tasks)
    tiles_total = sum(shared.tiles_in(plan.job, g) for g in shared.uses)

    progressed = [0]

    def on_tiles(n: int) -> None:
        progressed[0] += n
        if tile_progress:
            tile_progress(progressed[0], tiles_total)

    def on_done(result: dict[str, Any]) -> None:
        totals["ran_on"].update(result.get("ran_on", []))
        totals["batch"].update(result.get("batch", []))
        totals["clipped"] += result["clipped"]
        for key in COUNTED:
            totals[key] += result.get(key, 0)
        totals["pinned"] += result.get("pinned", 0)
        totals["done"] += 1
        if progress:
            progress(result, totals["done"], len(tasks))

    if not tasks:
        return totals
    hint = resume_command(plan.input_path, Path(plan.job.output_root))

    def kept() -> str:  # how far the run got, for every failure message below
        return f"after {totals['done']} of {len(tasks)} blocks; finished blocks are kept"

    try:
        run_blocks(client, plan.job, plan.tasks, tasks, on_tiles, on_done)
    except KeyboardInterrupt as exc:
        raise ResumableInterrupt(f"interrupted {kept()}. Resume with: {hint}") from exc
    except BigrestoreError as exc:  # a check on a worker (damaged chunk, bad pixels): same kind
        if hint in str(exc):
            raise
        raise type(exc)(f"{exc}; {kept()}; fix the cause, then: {hint}") from exc
    except Exception as exc:  # a task failed on a worker: unreadable chunk, disk full, ...
        raise IOFailure(
            f"{plan.input_path}: a block failed {kept()}: {type(exc).__name__}: {exc}; "
            f"fix the cause, then: {hint}"
        ) from exc
    return totals


def plane_records(per_plane: tuple[tuple[Stats, ...], ...], channels: Iterable[int]) -> dict:
    """Channel -> its statistics for the manifest: one record when every plane shares them,
    else a list in plane order (t · nz + z)."""
    if len(per_plane) == 1:
        return {str(c): per_plane[0][c].to_dict() for c in channels}
    return {str(c): [plane[c].to_dict() for plane in per_plane] for c in channels}


def finish(
    plan: RunPlan,
    store: RunStore,
    record: dict[str, Any],
    totals: dict[str, Any],
    cluster: ClusterSpec,
    seconds: tuple[float, float],
    min_side: int,
) -> dict[str, Any]:
    """Pyramids and metadata of every output, then the complete manifest (written last)."""
    images = [
        (p.path, replace(plan.out_meta, name=f"{plan.out_meta.name} {p.path}"), "auto")
        for p in plan.outputs
    ]
    store.finalise(images, min_side)
    compute_seconds, started = seconds
    norm = plan.model.normalization
    manifest = {
        **record,
        "status": "complete",
        "input_statistics": plane_records(plan.job.input_stats, plan.channels),
        "output_statistics": list(
            plane_records(plan.job.output_stats, range(len(plan.channels))).values()
        ),
        "normalization": {
            "p_low": norm.p_low,
            "p_high": norm.p_high,
            "output_scale": plan.settings.output_scale,
        },
        "outputs": [p.path for p in plan.outputs],
        "calibration": calibration_note(plan),
        "blocks": len(plan.tasks),
        "cost": plan.cost.to_dict(),
        "blocks_this_run": totals["done"],
        "tiles_this_run": totals["tiles"],
        "network_evaluations_this_run": totals["evaluations"],
        "skipped_tiles_this_run": totals["skipped"],
        "entropy": entropy_note(plan, totals),
        "background": background_note(plan),
        "saturation": saturation_note(plan, totals),
        "fill": fill_note(plan, totals),
        "rounding": rounding_note(plan),
        "sampling": sampling_note(plan),
        "clipped_pixels": totals["clipped"],
        "pinned_pixels": totals["pinned"],
        "clipping": "clipped_pixels: mean values outside the output dtype's range, clipped when cast; "
        "pinned_pixels: pixels whose every sample ended at the sampler's clip bound (--clip-bound, "
        "model space), i.e. highlights the sampler truncated",
        "ran_on": sorted(totals["ran_on"]),
        "network_batch": sorted(totals["batch"]),
        "compute_seconds": round(compute_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "cluster": {
            "gpus": cluster.gpus,
            "workers": cluster.workers,
            "scheduler": cluster.scheduler,
        },
    }
    store.write_manifest(manifest)
    return manifest


def restore(
    input_path: str | Path,
    output_path: str | Path | None = None,
    *,
    model: str | Path | None = None,
    settings: RunSettings | None = None,
    cluster: ClusterSpec | None = None,
    channels: tuple[str, ...] | None = None,
    series: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    ngff_version: str | None = None,
    device: str = "auto",
    allow_missing_chunks: bool = False,
    progress: Progress | None = None,
    tile_progress: Callable[[int, int], None] | None = None,
    on_client: Callable[[Any], None] | None = None,
    pyramid_min_side: int = PYRAMID_MIN_SIDE,
) -> RestoreResult:
    """Restore an OME-Zarr image; write one multiscale image per output volume (mean, std, ...).

    ``progress(record, done, total)`` is called after every block (the CLI draws a bar with it).
    Raises typed errors (see bigrestore.errors) before any write when the input is bad.
    """
    input_path = Path(input_path)
    output = Path(output_path) if output_path else default_output(input_path)
    cluster = cluster or ClusterSpec()
    check_paths(input_path, output, resume, overwrite)
    check_gpus(cluster.gpus)
    resolve_version(output, resume, ngff_version)  # a bad --ngff-version, before the plan's reads
    from bigrestore.run.plan import make_plan

    plan = make_plan(
        input_path,
        output,
        model,
        settings or RunSettings(),
        channels,
        series,
        device,
        cluster.torch_threads(),
        allow_missing_chunks,
    )
    from bigrestore.run.estimate import check_disk_space

    check_disk_space(plan, output)  # refuse before anything is written when the outputs cannot fit
    version = resolve_version(output, resume, ngff_version, plan.image.ngff_version)
    plan, scale_record = settle_output_scale(plan, output, resume, device, cluster.torch_threads())
    record = {**run_record(plan, version, cluster, series), "output_scale": scale_record}
    started = time.perf_counter()
    try:  # the cluster first: a scheduler that cannot be reached is refused before anything is written
        with (
            open_client(cluster) as client,
            output_lock(output, resume_command(input_path, output)),
        ):
            if on_client:
                on_client(client)
            store, tasks = open_store(plan, output, record, resume)
            totals = execute(plan, tasks, client, progress, tile_progress)
            compute_seconds = time.perf_counter() - started
            manifest = finish(
                plan, store, record, totals, cluster, (compute_seconds, started), pyramid_min_side
            )
    except KeyboardInterrupt as exc:  # before or after the blocks (execute reports those itself)
        hint = resume_command(input_path, output) if output.exists() else "start it again"
        raise ResumableInterrupt(
            f"interrupted; nothing finished is lost. Continue with: {hint}"
        ) from exc
    return RestoreResult(
        output,
        len(plan.tasks),
        len(tasks),
        totals["tiles"],
        compute_seconds,
        totals["clipped"],
        manifest,
    )
