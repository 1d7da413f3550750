"""``bigrestore plan``: what ``bigrestore run`` would cost with the same input and options,
before anything is computed or written (bigrestore.run.estimate)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from bigrestore.commands.help import SectionedCommand, option, with_options
from bigrestore.commands.run import OPTIONS as RUN_OPTIONS
from bigrestore.commands.run_options import settings_from_options

#: Options of ``run`` that change nothing a plan reports.
NOT_PLANNED = ("resume", "overwrite")
#: RunSettings fields given by ``run``'s options of the same name.
SETTINGS = (
    "samples",
    "sampler",
    "eta",
    "spacing",
    "clip_x0",
    "antithetic",
    "flips",
    "tile",
    "overlap",
    "seed",
)
SETTINGS += (
    "batch",
    "dtype",
    "output_scale",
    "chunk",
    "save_samples",
    "precision",
    "normalise_per",
)


def option_name(decorator: Any) -> str:
    """The parameter name of a ``click.option`` decorator."""

    def probe() -> None:
        """Only carries the option."""

    decorator(probe)
    return probe.__click_params__[-1].name  # type: ignore[attr-defined]


OPTIONS = [o for o in RUN_OPTIONS if option_name(o) not in NOT_PLANNED] + [
    option(
        "--timing-calls",
        "--calibration-calls",
        "calibration_calls",
        section="Estimate",
        type=click.IntRange(min=0),
        default=5,
        show_default=True,
        help="Network calls timed on this machine for the time estimate (0: no time).",
    ),
    option("--json", "as_json", section="Estimate", is_flag=True, help="Print JSON (scripts)."),
]


@click.command("plan", cls=SectionedCommand)
@click.argument("input_path", metavar="INPUT.zarr", type=click.Path(path_type=Path))
@with_options(OPTIONS)
def command(input_path: Path, **opts: Any) -> None:
    """What `bigrestore run` would do with the same options: blocks, tiles, network
    evaluations, output size and free disk space, memory per worker and the time.

    The time comes from a few network calls timed on this machine at the run's batch, tile,
    precision and threads per worker (about as many seconds as it takes to load the model).
    Nothing is written; the input's pixels are not read (chunks are counted).

    \b
    Examples:
      bigrestore plan slide.zarr --samples 15 --steps 8
      bigrestore plan slide.zarr --gpus 4 --json
    """
    started = time.perf_counter()
    from bigrestore.devices import usable_cores
    from bigrestore.run.cluster import cluster_spec
    from bigrestore.run.estimate import calibrate, estimate
    from bigrestore.run.plan import make_plan
    from bigrestore.run.settings import default_output

    settings = settings_from_options(opts, (*SETTINGS, "steps"))
    cluster = cluster_spec(
        opts["gpus"], opts["workers"], opts["scheduler"], opts["threads_per_worker"]
    )
    device = "cuda" if cluster.gpus else opts["device"]
    check_device(cluster.gpus, device)  # what run refuses first, and nothing to time on
    output = opts["output"] or default_output(input_path)
    refusal = output_refusal(input_path, output)
    channels = tuple(opts["channels"].split(",")) if opts["channels"] else None
    plan = make_plan(
        input_path, output, opts["model"], settings, channels, opts["series"], device,
        cluster.torch_threads(), allow_missing_chunks=True, statistics=False,
    )  # fmt: skip
    planned = time.perf_counter() - started  # as run's own start: imports, the plan
    workers = scheduler_workers(cluster.scheduler) if cluster.scheduler else cluster.workers or 1
    local = 1 if cluster.gpus or cluster.scheduler else min(workers, usable_cores())
    calls, threads = opts["calibration_calls"], cluster.torch_threads()
    calibration = calibrate(plan, device, threads, calls, local) if calls else None
    figures = estimate(plan, output, workers, calibration)
    if figures["seconds"]:  # the whole `bigrestore run` command: its own start too
        seconds = figures["seconds"]
        seconds.update(command=round(planned, 2), total=round(seconds["total"] + planned, 2))
    figures.update(
        input=str(input_path),
        output=str(output),
        model=str(plan.model.directory),
        settings=plan.settings.to_dict(),
        needs_allow_missing_chunks=(
            0 <= figures["chunks_stored"] < figures["chunks_expected"]
            and not opts["allow_missing_chunks"]
        ),
        plan_seconds=round(time.perf_counter() - started, 2),
        run_would_refuse=str(refusal) if refusal else None,
        output_exists=output.exists(),
    )
    click.echo(json.dumps(figures, indent=2) if opts["as_json"] else "\n".join(lines(figures)))
    if refusal is not None:  # the figures stand; the exit code is the one run would give
        raise refusal


def check_device(gpus: int, device: str) -> None:
    """Refuse, as run does, GPUs or a CUDA device that torch does not see."""
    from bigrestore.devices import pick_device
    from bigrestore.run.cluster import check_gpus

    if gpus:
        check_gpus(gpus)
    elif device.startswith("cuda"):
        pick_device(device)


def output_refusal(input_path: Path, output: Path) -> Any:
    """The error run would give for this output location whatever its options (inside the
    input, not bigrestore's to replace, not writable, locked by a run ...), or None. That it
    exists is no refusal here: run takes --overwrite or --resume for it (a line says so)."""
    from bigrestore.errors import BigrestoreError
    from bigrestore.run.restore import check_paths

    try:
        check_paths(input_path, output, resume=False, overwrite=True)
    except BigrestoreError as exc:
        return exc
    return None


def scheduler_workers(address: str) -> int:
    """Workers of a running Dask cluster (``--scheduler``)."""
    from bigrestore.run.cluster import ClusterSpec, open_client, worker_count

    with open_client(ClusterSpec(scheduler=address)) as client:
        return worker_count(client)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def lines(f: dict[str, Any]) -> list[str]:
    """The plan as text, one figure per line."""
    s = f["settings"]
    stored, expected = f["chunks_stored"], f["chunks_expected"]
    census = "not counted (not a local folder)" if stored < 0 else f"{stored} of {expected} stored"
    if f["needs_allow_missing_chunks"]:
        census += f"; {expected - stored} absent: run refuses it without --allow-missing-chunks"
    disk = f["disk"]
    fits = "fits" if disk["fits"] else "DOES NOT FIT: run will refuse to start"
    out = [
        f"plan  {f['input']} -> {f['output']}",
        f"  input chunks         {census}",
        f"  settings             {s['samples']} samples x {s['sampling']['steps']} steps "
        f"({s['sampling']['sampler']}), tile {s['tile']}, overlap {s['overlap']}, "
        f"chunk {s['chunk']}, precision {s['precision']}",
        f"  blocks               {f['blocks']}",
        f"  tiles                {f['tiles']}",
        f"  network evaluations  {f['network_evaluations']} "
        f"({f['network_calls']} batched calls, padding included)",
        f"  tile px / output px  {f['tile_pixels_per_output_pixel']:.2f}",
        f"  output size          {human_bytes(f['output_level0_bytes'])} at full resolution, "
        f"{human_bytes(disk['required'])} with pyramids (uncompressed)",
        f"  disk                 {human_bytes(disk['free'])} free at {disk['where']}: {fits}",
    ]
    memory = f["memory_per_worker"]
    parts = ", ".join(
        f"{k.replace('_', ' ')} {human_bytes(v)}" for k, v in memory.items() if v and k != "peak"
    )
    cal = f["calibration"]
    unmeasured = "; the process and network not measured" if cal is None else ""
    out.append(f"  memory per worker    ~{human_bytes(memory['peak'])} peak ({parts}{unmeasured})")
    if f["output_exists"] and not f["run_would_refuse"]:
        out.append(
            f"  output               {f['output']} exists: run needs --overwrite or --resume"
        )
    if cal is None:
        out.append("  time                 not estimated (--timing-calls 0)")
        return out
    sec = f["seconds"]
    out += [
        f"  time                 ~{human_seconds(sec['total'])} on {f['workers']} "
        f"{cal['device']} worker(s) (start {sec['command'] + sec['startup']:.0f} s, compute "
        f"{human_seconds(sec['compute'])}, pyramids {human_seconds(sec['finish'])})",
        f"  calibration          {cal['seconds_per_call'] * 1000:.0f} ms per call of "
        f"{cal['batch']} x {cal['tile']}² ({cal['precision']}, {cal['threads']} thread(s); "
        f"{cal['calls']} calls timed in {cal['processes']} process(es) at once on this machine)",
        f"  planned in           {f['plan_seconds']:.1f} s",
    ]
    return out
