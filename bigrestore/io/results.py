"""The output of a run as an ``xarray.Dataset``: every output volume, lazily, in physical units.

:func:`open_result` reads the run manifest (the root attribute ``bigrestore``), opens each
output the manifest lists (``mean``, ``std``, ``entropy``; the ``samples/NN.zarr`` of
``--save-samples`` become one ``samples`` variable with a ``sample`` dimension) as dask-backed
variables, and gives them coordinates from the NGFF coordinate transformations of the chosen
pyramid level: ``origin + scale * index`` per axis, with the axis unit in the coordinate's
``attrs["units"]``, and the channel labels of the OMERO metadata on ``c``. Nothing is read but
metadata until values are asked for.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from bigrestore.errors import BadInputError, MissingInputError, describe
from bigrestore.io.images import OpenedImage, open_image
from bigrestore.io.ngff import ome_attributes
from bigrestore.io.paths import MARK_KEY, group_attributes
from bigrestore.outputs import BY_NAME

_SAMPLE = re.compile(r"^(?P<name>[^/]+)/(?P<index>\d+)\.zarr$")


def level_transform(group_path: Path, level: int) -> tuple[list[float], list[float]]:
    """Scale and translation of pyramid ``level`` (the dataset's transformations composed
    with the multiscale-wide ones, as NGFF defines them)."""
    ome, _ = ome_attributes(zarr.open_group(str(group_path), mode="r"))
    multiscale = ome["multiscales"][0]
    ndim = len(multiscale["axes"])

    def parse(transforms: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
        scale, translation = [1.0] * ndim, [0.0] * ndim
        for t in transforms:
            if t.get("type") == "scale":
                scale = [float(v) for v in t["scale"]]
            elif t.get("type") == "translation":
                translation = [float(v) for v in t["translation"]]
        return scale, translation

    scale, translation = parse(multiscale["datasets"][level].get("coordinateTransformations", []))
    g_scale, g_translation = parse(multiscale.get("coordinateTransformations", []))
    return (
        [s * g for s, g in zip(scale, g_scale, strict=True)],
        [t * g + gt for t, g, gt in zip(translation, g_scale, g_translation, strict=True)],
    )


def _coordinates(image: OpenedImage, group_path: Path, level: int) -> dict[str, xr.Variable]:
    """One coordinate per axis: physical positions (units in attrs), channel labels on c."""
    scale, translation = level_transform(group_path, level)
    coords = {}
    for i, axis in enumerate(image.meta.axes):
        n = image.data.shape[i]
        if axis == "c":
            labels = image.meta.channel_names or tuple(f"channel {k}" for k in range(n))
            coords["c"] = xr.Variable("c", np.asarray(labels, dtype=str))
            continue
        values = translation[i] + scale[i] * np.arange(n, dtype=np.float64)
        attrs = {"units": image.meta.units[i]} if image.meta.units[i] else {}
        coords[axis] = xr.Variable(axis, values, attrs={**attrs, "scale": scale[i]})
    return coords


def _manifest(store: Path, allow_incomplete: bool) -> dict[str, Any]:
    """The run manifest of ``store``; refuses a path that is no run output, or an unfinished
    run unless ``allow_incomplete``."""
    if not store.exists():
        raise MissingInputError(f"{store}: no such run output")
    manifest = (group_attributes(store) or {}).get(MARK_KEY)
    if not isinstance(manifest, dict) or "settings" not in manifest:
        raise BadInputError(
            describe(
                store, "manifest", "a bigrestore run output (root attribute 'bigrestore')", "none"
            )
        )
    if manifest.get("status") != "complete" and not allow_incomplete:
        raise BadInputError(
            describe(store, "status", "complete", manifest.get("status"))
            + "; finish it with `bigrestore run ... --resume` (unwritten chunks read as 0), "
            "or pass allow_incomplete=True"
        )
    return manifest


def _variable_attrs(name: str, image: OpenedImage, path: str) -> dict[str, Any]:
    row = BY_NAME.get(name)
    attrs: dict[str, Any] = {"path": path, "level_shapes": [list(s) for s in image.level_shapes]}
    if row is not None:
        attrs.update(description=row.description, units_kind=row.units)
    return attrs


def open_result(path: str | Path, level: int = 0, *, allow_incomplete: bool = False) -> xr.Dataset:
    """The outputs of ``bigrestore run`` in ``path`` (OUT.zarr) as a lazy ``xarray.Dataset``.

    Variables: every output of the manifest's ``outputs`` list (``mean``, ``std``,
    ``entropy``; per-sample outputs stacked as ``samples`` along ``sample``), dask-backed, at
    pyramid ``level`` (0 = full resolution). Coordinates: physical positions from that level's
    NGFF scale and translation (``attrs["units"]``), channel labels on ``c``. ``attrs``: the
    run manifest, plus ``store`` and ``level``.

    >>> ds = open_result("stack.restored.zarr")
    >>> ds["mean"].sel(z=3.0, method="nearest").compute()
    """
    store = Path(path)
    manifest = _manifest(store, allow_incomplete)
    outputs = manifest.get("outputs") or [
        n for n in ("mean", "std", "entropy") if (store / n).is_dir()
    ]
    variables: dict[str, xr.DataArray] = {}
    samples: dict[str, list[tuple[int, OpenedImage, str]]] = {}
    coords: dict[str, xr.Variable] = {}
    for out in outputs:
        image = open_image(store / out, level=level)
        if not coords:
            coords = _coordinates(image, store / out, level)
        match = _SAMPLE.match(out)
        if match:
            samples.setdefault(match["name"], []).append((int(match["index"]), image, out))
            continue
        variables[out] = xr.DataArray(
            image.data, dims=tuple(image.meta.axes), attrs=_variable_attrs(out, image, out)
        )
    for name, members in samples.items():
        members.sort(key=lambda m: m[0])
        first = members[0][1]
        data = da.stack([image.data for _, image, _ in members])
        attrs = _variable_attrs(name, first, f"{name}/")
        variables[name] = xr.DataArray(data, dims=("sample", *first.meta.axes), attrs=attrs)
        coords.setdefault("sample", xr.Variable("sample", [k for k, _, _ in members]))
    if not variables:
        raise BadInputError(describe(store, "outputs", "at least one output volume", outputs))
    attrs = {**manifest, "store": str(store), "level": level}
    return xr.Dataset(variables, coords=coords, attrs=attrs)
