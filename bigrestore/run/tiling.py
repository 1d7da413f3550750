"""Geometry of tiled restoration: the global tile grid, output blocks and blend windows.

Pure numpy (no torch, no I/O), so every rule here is tested on tiny arrays.
All coordinates are integer pixels of one image plane (Y, X), half-open
``[start, stop)``, with the origin at the image's top-left corner.

Rules (DESIGN.md decisions 1 and 2):

* **Global grid.** Along each axis of length ``L`` tiles start at ``0, s, 2s, ...``
  with stride ``s = tile - overlap``, for as long as a tile still ends before the
  edge; one last tile is then shifted back to end exactly at the edge
  (origin ``L - tile``). Every tile is therefore full size and lies inside the
  image, and a tile's origin never depends on which block asks for it.
* **Small images.** Along an axis shorter than one tile there is a single tile at
  origin 0 and the plane is reflect-padded at its end (bottom / right) up to the
  tile size (:func:`pad_region`). ``tile`` is a multiple of the network's
  downsampling factor, so the padded plane is one too; every tile the network
  sees has the same shape, which keeps batches uniform.
* **Blocks.** Output blocks are whole chunks of the output's chunk grid
  (:func:`plan_blocks`), so each block has exactly one writer. A block computes
  every tile touching it, reads the union of those tiles (:func:`block_read_region`)
  and writes only its own pixels.
* **Blending.** Each pixel is the weighted mean of every tile covering it with one
  fixed window (:func:`blend_tiles`). Tiles are summed in sorted origin order, so a
  pixel's value is bit-identical whichever block computes it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bigrestore.errors import BadInputError, describe

Region = tuple[int, int, int, int]
"""Half-open region ``(y0, y1, x0, x1)`` in image pixels."""


def _as_int(value: object, field: str, where: str = "tile grid") -> int:
    """Accept Python or numpy integers (not bools); refuse anything else."""
    if isinstance(value, bool):
        raise BadInputError(describe(where, field, "an integer", repr(value)))
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise BadInputError(describe(where, field, "an integer", repr(value))) from None


def _check_tile_overlap(tile: int, overlap: int) -> None:
    if tile < 1:
        raise BadInputError(describe("tile grid", "tile", "tile >= 1", tile))
    if not 0 <= overlap < tile:
        raise BadInputError(
            describe("tile grid", "overlap", f"0 <= overlap < tile ({tile})", overlap)
        )


def axis_origins(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Sorted tile origins along one axis of ``length`` pixels (see module rules).

    Regular origins are multiples of ``tile - overlap``; the last one may be shifted
    back to ``length - tile``. An axis shorter than a tile has the single origin 0.
    """
    if length <= tile:
        return (0,)
    stride = tile - overlap
    # Regular origins k*stride whose tile still ends strictly before the edge ...
    regular = range(0, length - tile, stride)
    # ... then one tile ending exactly at the edge (on the grid when it happens to be).
    return (*regular, length - tile)


@dataclass(frozen=True)
class TileGrid:
    """Global tile grid over an image plane of ``height`` x ``width`` pixels.

    ``tile`` is the side of the square tiles fed to the network, ``overlap`` the
    pixels shared by neighbouring regular tiles, and ``multiple`` the network's
    total downsampling factor (``tile`` must be divisible by it).
    """

    height: int
    width: int
    tile: int
    overlap: int
    multiple: int = 1

    def __post_init__(self) -> None:
        for name in ("height", "width", "tile", "overlap", "multiple"):
            object.__setattr__(self, name, _as_int(getattr(self, name), name))
        if self.height < 1 or self.width < 1:
            found = (self.height, self.width)
            raise BadInputError(describe("tile grid", "image shape (y, x)", "both >= 1", found))
        if self.multiple < 1:
            raise BadInputError(describe("tile grid", "multiple", "multiple >= 1", self.multiple))
        _check_tile_overlap(self.tile, self.overlap)
        if self.tile % self.multiple:
            raise BadInputError(
                describe(
                    "tile grid",
                    "tile",
                    f"a multiple of the network's downsampling factor {self.multiple}",
                    self.tile,
                )
            )

    @property
    def stride(self) -> int:
        """Distance between regular tile origins, ``tile - overlap``."""
        return self.tile - self.overlap

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(y, x) extent the tiles cover: the image, reflect-padded up to ``tile`` where smaller."""
        return max(self.height, self.tile), max(self.width, self.tile)

    @cached_property
    def tile_origins_y(self) -> tuple[int, ...]:
        """Sorted global Y origins of the tiles."""
        return axis_origins(self.height, self.tile, self.overlap)

    @cached_property
    def tile_origins_x(self) -> tuple[int, ...]:
        """Sorted global X origins of the tiles."""
        return axis_origins(self.width, self.tile, self.overlap)

    def tiles(self) -> list[tuple[int, int]]:
        """Origins ``(ty, tx)`` of all tiles, sorted row-major."""
        return [(ty, tx) for ty in self.tile_origins_y for tx in self.tile_origins_x]

    def _check_region(self, y0: int, y1: int, x0: int, x1: int) -> None:
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ValueError(
                describe(
                    "tile grid",
                    "region (y0, y1, x0, x1)",
                    f"a non-empty region inside the image ({self.height}, {self.width})",
                    (y0, y1, x0, x1),
                )
            )

    def _touching_axis(self, origins: tuple[int, ...], start: int, stop: int) -> tuple[int, ...]:
        # Origins and tile ends both increase, so the touching tiles are one run.
        arr = np.asarray(origins)
        first = int(np.searchsorted(arr + self.tile, start, side="right"))
        last = int(np.searchsorted(arr, stop, side="left"))
        return origins[first:last]

    def tiles_touching(self, y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int]]:
        """Origins ``(ty, tx)`` of the tiles whose extent intersects ``[y0, y1) x [x0, x1)``.

        Sorted row-major; the region must be non-empty and inside the image.
        """
        self._check_region(y0, y1, x0, x1)
        oy = self._touching_axis(self.tile_origins_y, y0, y1)
        ox = self._touching_axis(self.tile_origins_x, x0, x1)
        return [(ty, tx) for ty in oy for tx in ox]

    def halo_region(self, y0: int, y1: int, x0: int, x1: int) -> Region:
        """Union of the tiles touching ``[y0, y1) x [x0, x1)``, in padded-image coordinates.

        Tiles along an axis abut or overlap, so this union is a rectangle; it may
        extend past the image only where the image is smaller than a tile.
        """
        return self.tiles_region(self.tiles_touching(y0, y1, x0, x1))

    def tiles_region(self, origins: list[tuple[int, int]]) -> Region:
        """Union of the tiles at ``origins`` (non-empty), in padded-image coordinates."""
        tys = [ty for ty, _ in origins]
        txs = [tx for _, tx in origins]
        return min(tys), max(tys) + self.tile, min(txs), max(txs) + self.tile

    def tiles_owned(self, y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int]]:
        """Origins of the tiles that *start* in ``[y0, y1) x [x0, x1)``, sorted row-major.

        Every tile starts inside the image, so the blocks of a plan own every tile exactly
        once: a tile is computed by its owner block's task and shared with the blocks it
        touches (one computation per tile, not one per block that needs it)."""
        oy = [o for o in self.tile_origins_y if y0 <= o < y1]
        ox = [o for o in self.tile_origins_x if x0 <= o < x1]
        return [(ty, tx) for ty in oy for tx in ox]


def _ramp(overlap: int) -> np.ndarray:
    """Raised-cosine ramp of ``overlap`` samples, rising from just above 0 to just below 1.

    ``sin^2(pi/2 * (i + 1) / (overlap + 1))``: the ramps of two neighbours at the
    regular stride are mirror images, so they add to exactly 1 (sin^2 + cos^2).
    """
    i = np.arange(1, overlap + 1, dtype=np.float64)
    return np.sin(0.5 * np.pi * i / (overlap + 1)) ** 2


def window_1d(tile: int, overlap: int) -> np.ndarray:
    """1-D blend weights, float64 ``(tile,)``: raised-cosine ramps over ``overlap`` at both
    ends, 1 in between, strictly positive and symmetric."""
    _check_tile_overlap(tile, overlap)
    ramp = np.ones(tile, dtype=np.float64)
    ramp[:overlap] = _ramp(overlap)
    # min() of the rising and falling ramp keeps symmetry when 2*overlap > tile.
    return np.minimum(ramp, ramp[::-1])


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """Separable 2-D blend weights, float64 ``(tile, tile)`` (outer product of :func:`window_1d`).

    Strictly positive, so pixels that only one tile covers (image edges) still get
    weight; on the regular grid the weights of neighbours already sum to 1.
    """
    w = window_1d(tile, overlap)
    return np.outer(w, w)


def blend_tiles(
    tile_values: dict[tuple[int, int], np.ndarray],
    grid: TileGrid,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
) -> np.ndarray:
    """Weighted mean of overlapping tiles over the image region ``[y0, y1) x [x0, x1)``.

    ``tile_values`` maps tile origins ``(ty, tx)`` to arrays ``(..., tile, tile)``
    (any leading axes: channels, samples, statistics), and must hold every tile that
    touches the region; tiles that do not touch it are ignored. Each pixel becomes
    ``sum_k w_k v_k / sum_k w_k`` with the window of :func:`blend_window`, so the
    normalised weights are a partition of unity. Tiles are accumulated in sorted
    origin order, which makes a pixel's value bit-identical for any region that
    contains it. Returns float64 ``(..., y1 - y0, x1 - x0)``.
    """
    needed = grid.tiles_touching(y0, y1, x0, x1)
    missing = [key for key in needed if key not in tile_values]
    if missing:
        raise ValueError(f"blend_tiles: {len(missing)} touching tiles missing, e.g. {missing[0]}")
    t = grid.tile
    lead = np.shape(tile_values[needed[0]])[:-2]
    window = blend_window(t, grid.overlap)
    acc = np.zeros((*lead, y1 - y0, x1 - x0), dtype=np.float64)
    wsum = np.zeros((y1 - y0, x1 - x0), dtype=np.float64)
    for ty, tx in needed:
        values = np.asarray(tile_values[(ty, tx)])
        if values.shape != (*lead, t, t):
            raise ValueError(
                describe("blend_tiles", f"tile {(ty, tx)} shape", (*lead, t, t), values.shape)
            )
        # Intersection of the tile with the region, in region and in tile coordinates.
        iy0, iy1 = max(ty, y0), min(ty + t, y1)
        ix0, ix1 = max(tx, x0), min(tx + t, x1)
        out = np.s_[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        inside = np.s_[iy0 - ty : iy1 - ty, ix0 - tx : ix1 - tx]
        w = window[inside]
        acc[(..., *out)] += w * values[(..., *inside)]
        wsum[out] += w
    return acc / wsum


def pad_region(region: np.ndarray, grid: TileGrid, ry0: int, rx0: int) -> np.ndarray:
    """Reflect-pad an image region ``(..., h, w)`` read at ``(ry0, rx0)`` out to the padded plane.

    Only an axis where the image is smaller than a tile is padded, at its end, from
    the image edge to ``grid.padded_shape``; elsewhere the region is returned as is.
    Feed it :func:`block_read_region`'s region so every touching tile can be cut.
    """
    h, w = region.shape[-2:]
    ph, pw = grid.padded_shape
    pad_y = ph - grid.height if ry0 + h == grid.height else 0
    pad_x = pw - grid.width if rx0 + w == grid.width else 0
    if pad_y == 0 and pad_x == 0:
        return region
    widths = [(0, 0)] * (region.ndim - 2) + [(0, pad_y), (0, pad_x)]
    return np.pad(region, widths, mode="reflect")


def cut_tiles(
    region: np.ndarray,
    grid: TileGrid,
    ry0: int,
    rx0: int,
    origins: list[tuple[int, int]],
) -> dict[tuple[int, int], np.ndarray]:
    """Views of the tiles at ``origins`` in a (padded) region ``(..., h, w)`` read at ``(ry0, rx0)``.

    Returns ``{(ty, tx): array (..., tile, tile)}``; raises ``ValueError`` if a tile
    is not wholly inside the region.
    """
    h, w = region.shape[-2:]
    t = grid.tile
    tiles = {}
    for ty, tx in origins:
        oy, ox = ty - ry0, tx - rx0
        if oy < 0 or ox < 0 or oy + t > h or ox + t > w:
            raise ValueError(
                describe(
                    "cut_tiles",
                    f"tile {(ty, tx)}",
                    f"inside the region at {(ry0, rx0)} of shape {(h, w)}",
                    "outside",
                )
            )
        tiles[(ty, tx)] = region[..., oy : oy + t, ox : ox + t]
    return tiles


@dataclass(frozen=True)
class Block:
    """One unit of work: output pixels ``[y0, y1) x [x0, x1)`` made of whole chunks.

    ``index`` is the block's position in the block grid, ``(by, bx)``.
    """

    index: tuple[int, ...]
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def region(self) -> Region:
        """``(y0, y1, x0, x1)``."""
        return self.y0, self.y1, self.x0, self.x1


def plan_blocks(
    height: int,
    width: int,
    chunk_y: int,
    chunk_x: int,
    chunks_per_block: int | tuple[int, int] = 1,
) -> list[Block]:
    """Split a ``height`` x ``width`` plane into blocks of whole output chunks, row-major.

    A block spans ``chunks_per_block`` chunks along each axis (an int, or ``(ny, nx)``);
    only the last block along an axis may be shorter, ending at the image edge where
    the last chunk is partial. No two blocks share a chunk (one writer per chunk).
    """
    if isinstance(chunks_per_block, tuple):
        ny, nx = chunks_per_block
    else:
        ny = nx = chunks_per_block
    named = {
        "height": height,
        "width": width,
        "chunk_y": chunk_y,
        "chunk_x": chunk_x,
        "chunks_per_block (y)": ny,
        "chunks_per_block (x)": nx,
    }
    sizes = {field: _as_int(value, field, "block plan") for field, value in named.items()}
    for field, value in sizes.items():
        if value < 1:
            raise BadInputError(describe("block plan", field, ">= 1", value))
    height, width = sizes["height"], sizes["width"]
    chunk_y, chunk_x = sizes["chunk_y"], sizes["chunk_x"]
    ny, nx = sizes["chunks_per_block (y)"], sizes["chunks_per_block (x)"]
    by, bx = chunk_y * ny, chunk_x * nx
    return [
        Block((i, j), y0, min(y0 + by, height), x0, min(x0 + bx, width))
        for i, y0 in enumerate(range(0, height, by))
        for j, x0 in enumerate(range(0, width, bx))
    ]


def block_read_region(block: Block, grid: TileGrid) -> Region:
    """Image region ``(ry0, ry1, rx0, rx1)`` a block must read: its tiles' union, clipped to the image."""
    return read_region_of(grid.halo_region(*block.region), grid)


def read_region_of(region: Region, grid: TileGrid) -> Region:
    """A padded-image region clipped to the image: what must be read to cut its tiles."""
    hy0, hy1, hx0, hx1 = region
    return max(hy0, 0), min(hy1, grid.height), max(hx0, 0), min(hx1, grid.width)
