"""``bigrestore info``: what is in an OME-Zarr image, and the status of a run's output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--series", type=int, default=None, help="Image of a bioformats2raw store (default 0)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(path: Path, series: int | None, as_json: bool) -> None:
    """Describe an OME-Zarr image (axes, shape, dtype, chunks, levels, scale, channels), or a
    `bigrestore run` output: its status (running, interrupted, complete) and blocks done."""
    from bigrestore.io.images import open_image
    from bigrestore.io.runstore import run_status

    status = run_status(path)
    if status is not None:
        _print(status, as_json, _run_lines)
        return
    image = open_image(path, series=series)
    record = {
        "path": str(image.path),
        "ngff_version": image.ngff_version,
        "axes": image.meta.axes,
        "shape": list(image.data.shape),
        "dtype": str(image.data.dtype),
        "chunks": list(image.chunks),
        "levels": [list(s) for s in image.level_shapes],
        "scale": list(image.meta.scale),
        "translation": list(image.meta.translation),
        "units": list(image.meta.units),
        "channel_names": list(image.meta.channel_names or []),
    }
    _print(record, as_json, _image_lines)


def _print(record: dict[str, Any], as_json: bool, lines: Any) -> None:
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        for line in lines(record):
            click.echo(line)


def _image_lines(record: dict[str, Any]) -> list[str]:
    axes = record["axes"]
    scale = [
        f"{s:g} {u or ''}".strip() for s, u in zip(record["scale"], record["units"], strict=True)
    ]
    lines = [
        f"{record['path']}  (OME-Zarr NGFF {record['ngff_version']})",
        f"  axes     {axes}",
        f"  shape    {_by_axis(axes, record['shape'])}",
        f"  dtype    {record['dtype']}",
        f"  chunks   {_by_axis(axes, record['chunks'])}",
        f"  scale    {_by_axis(axes, scale)}",
        f"  levels   {len(record['levels'])}: "
        + ", ".join("x".join(map(str, s)) for s in record["levels"]),
    ]
    if record["channel_names"]:
        lines.append(f"  channels {', '.join(record['channel_names'])}")
    return lines


def _run_lines(record: dict[str, Any]) -> list[str]:
    lines = [
        f"{record['path']}  (bigrestore run output)",
        f"  status   {record['status']}" + (f" ({record['lock']})" if record.get("lock") else ""),
        f"  blocks   {record['blocks_done']} of {record['blocks']} done",
        f"  input    {record.get('input')}",
        f"  model    {record.get('model')}",
        f"  outputs  {', '.join(record.get('outputs') or [])}",
    ]
    if record.get("hint"):
        lines.append(f"  next     {record['hint']}")
    return lines


def _by_axis(axes: str, values: list[Any]) -> str:
    return "  ".join(f"{a}={v}" for a, v in zip(axes, values, strict=True))
