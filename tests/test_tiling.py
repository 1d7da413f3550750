"""Invariants of the tile grid, blocks and blend windows (bigrestore.run.tiling), on tiny arrays."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bigrestore.errors import BadInputError
from bigrestore.run import tiling
from bigrestore.run.tiling import (
    Block,
    TileGrid,
    axis_origins,
    blend_tiles,
    blend_window,
    block_read_region,
    cut_tiles,
    pad_region,
    plan_blocks,
    window_1d,
)

# Seeded (derandomised) examples: the same shapes on every run and machine.
SEEDED = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def grids(draw: st.DrawFn, max_side: int = 120, max_tile: int = 40) -> TileGrid:
    multiple = draw(st.sampled_from([1, 2, 4, 8]))
    tile = multiple * draw(st.integers(1, max_tile // multiple))
    overlap = draw(st.integers(0, tile - 1))
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    return TileGrid(height, width, tile, overlap, multiple)


@st.composite
def regions(draw: st.DrawFn, grid: TileGrid) -> tuple[int, int, int, int]:
    y0 = draw(st.integers(0, grid.height - 1))
    y1 = draw(st.integers(y0 + 1, grid.height))
    x0 = draw(st.integers(0, grid.width - 1))
    x1 = draw(st.integers(x0 + 1, grid.width))
    return y0, y1, x0, x1


def random_tiles(grid: TileGrid, lead: tuple[int, ...], seed: int) -> dict:
    """Independent random values per tile: tiles do not agree where they overlap."""
    rng = np.random.default_rng(seed)
    return {o: rng.standard_normal((*lead, grid.tile, grid.tile)) for o in grid.tiles()}


def read_and_cut(image: np.ndarray, grid: TileGrid, block: Block) -> dict:
    """What a block task does: read its halo, pad a small image, cut the tiles touching it."""
    ry0, ry1, rx0, rx1 = block_read_region(block, grid)
    padded = pad_region(image[..., ry0:ry1, rx0:rx1], grid, ry0, rx0)
    return cut_tiles(padded, grid, ry0, rx0, grid.tiles_touching(*block.region))


# --- the grid -------------------------------------------------------------------------


@SEEDED
@given(length=st.integers(1, 300), tile=st.integers(1, 64), data=st.data())
def test_axis_origins_cover_and_sit_on_global_grid(length: int, tile: int, data) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    stride = tile - overlap
    origins = axis_origins(length, tile, overlap)
    assert origins[0] == 0
    assert all(a < b for a, b in zip(origins, origins[1:], strict=False))
    extent = max(length, tile)
    assert all(0 <= o and o + tile <= extent for o in origins)  # full size, inside
    covered = np.zeros(extent, dtype=int)
    for o in origins:
        covered[o : o + tile] += 1
    assert covered[:length].min() >= 1
    # All regular grid points whose tile ends before the edge, then one tile ending at it.
    assert list(origins[:-1]) == [k * stride for k in range(len(origins) - 1)]
    assert origins[-1] == max(length - tile, 0)
    assert (len(origins) - 2) * stride + tile < length or len(origins) == 1


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "ys", "xs", "padded"),
    [
        (257, 311, 256, 32, (0, 1), (0, 55), (257, 311)),
        (600, 480, 256, 32, (0, 224, 344), (0, 224), (600, 480)),
        (5, 7, 256, 32, (0,), (0,), (256, 256)),
        (256, 256, 256, 32, (0,), (0,), (256, 256)),
        (512, 300, 256, 0, (0, 256), (0, 44), (512, 300)),
        (40, 300, 256, 64, (0,), (0, 44), (256, 300)),
    ],
)
def test_known_grids(height, width, tile, overlap, ys, xs, padded) -> None:
    grid = TileGrid(height, width, tile, overlap, multiple=8)
    assert grid.tile_origins_y == ys
    assert grid.tile_origins_x == xs
    assert grid.padded_shape == padded
    assert grid.tiles() == [(y, x) for y in ys for x in xs]


@SEEDED
@given(grid=grids())
def test_tiles_cover_every_pixel_inside_padded_plane(grid: TileGrid) -> None:
    ph, pw = grid.padded_shape
    assert ph % grid.multiple == 0 or ph == grid.height
    covered = np.zeros(grid.padded_shape, dtype=int)
    for ty, tx in grid.tiles():
        assert 0 <= ty and ty + grid.tile <= ph and 0 <= tx and tx + grid.tile <= pw
        covered[ty : ty + grid.tile, tx : tx + grid.tile] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tile": 32, "overlap": 32}, "overlap"),
        ({"tile": 32, "overlap": 40}, "overlap"),
        ({"tile": 32, "overlap": -1}, "overlap"),
        ({"tile": 0, "overlap": 0}, "tile"),
        ({"tile": 36, "overlap": 4, "multiple": 8}, "tile"),
        ({"tile": 32, "overlap": 4, "multiple": 0}, "multiple"),
        ({"tile": 32.0, "overlap": 4}, "tile"),
        ({"tile": 32, "overlap": True}, "overlap"),
        ({"tile": 32, "overlap": 4, "height": 0}, "image shape"),
    ],
)
def test_grid_validation(kwargs: dict, field: str) -> None:
    args = {"height": 100, "width": 100, **kwargs}
    with pytest.raises(BadInputError, match=field) as err:
        TileGrid(**args)
    assert "expected" in str(err.value) and "found" in str(err.value)


def test_grid_accepts_numpy_integers() -> None:
    grid = TileGrid(np.int64(70), np.int32(50), np.int64(32), np.int16(8), np.int64(8))
    assert type(grid.height) is int and grid.tile_origins_y == (0, 24, 38)


# --- tiles touching a region, halo and read region -------------------------------------


@SEEDED
@given(data=st.data())
def test_tiles_touching_is_exactly_the_intersecting_tiles(data) -> None:
    grid = data.draw(grids())
    y0, y1, x0, x1 = data.draw(regions(grid))
    t = grid.tile
    brute = [
        (ty, tx) for ty, tx in grid.tiles() if ty < y1 and ty + t > y0 and tx < x1 and tx + t > x0
    ]
    touching = grid.tiles_touching(y0, y1, x0, x1)
    assert touching == brute
    hy0, hy1, hx0, hx1 = grid.halo_region(y0, y1, x0, x1)
    assert (hy0, hx0) == (min(o[0] for o in brute), min(o[1] for o in brute))
    assert (hy1, hx1) == (max(o[0] for o in brute) + t, max(o[1] for o in brute) + t)
    # The read region holds every touching tile's pixels inside the image, and no more.
    block = Block((0, 0), y0, y1, x0, x1)
    ry0, ry1, rx0, rx1 = block_read_region(block, grid)
    assert ry0 <= y0 and ry1 >= y1 and rx0 <= x0 and rx1 >= x1
    assert (ry0, ry1) == (hy0, min(hy1, grid.height)) and (rx0, rx1) == (hx0, min(hx1, grid.width))
    image = np.arange(grid.height * grid.width, dtype=np.float64).reshape(grid.height, -1)
    tiles = read_and_cut(image, grid, block)
    assert sorted(tiles) == touching
    for ty, tx in touching:  # tiles cut from the read region match the image
        part = image[ty : ty + t, tx : tx + t]
        np.testing.assert_array_equal(tiles[(ty, tx)][: part.shape[0], : part.shape[1]], part)


@pytest.mark.parametrize("region", [(0, 0, 0, 5), (0, 5, 3, 3), (-1, 5, 0, 5), (0, 101, 0, 5)])
def test_tiles_touching_refuses_regions_outside_image(region) -> None:
    with pytest.raises(ValueError, match="region"):
        TileGrid(100, 100, 32, 8).tiles_touching(*region)


def test_pad_region_reflects_small_images_only() -> None:
    grid = TileGrid(5, 7, 8, 2, multiple=4)
    image = np.arange(2 * 5 * 7, dtype=np.float64).reshape(2, 5, 7)
    padded = pad_region(image, grid, 0, 0)
    assert padded.shape == (2, 8, 8)
    np.testing.assert_array_equal(padded[:, :5, :7], image)
    np.testing.assert_array_equal(padded[:, 5, :7], image[:, 3])  # reflect, edge not repeated
    np.testing.assert_array_equal(padded[:, 7, :7], image[:, 1])
    np.testing.assert_array_equal(padded[:, :5, 7], image[:, :, 5])
    big = TileGrid(50, 50, 8, 2)
    region = np.zeros((10, 10))
    assert pad_region(region, big, 40, 40) is region


def test_cut_tiles_refuses_tiles_outside_region() -> None:
    grid = TileGrid(64, 64, 16, 4)
    with pytest.raises(ValueError, match="outside"):
        cut_tiles(np.zeros((20, 20)), grid, 0, 0, [(12, 0)])


# --- blend window ------------------------------------------------------------------------


@SEEDED
@given(tile=st.integers(1, 80), data=st.data())
def test_blend_window_shape(tile: int, data) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    w1 = window_1d(tile, overlap)
    w = blend_window(tile, overlap)
    assert w.shape == (tile, tile) and w.dtype == np.float64
    np.testing.assert_array_equal(w, np.outer(w1, w1))
    np.testing.assert_array_equal(w, w[::-1, :])
    np.testing.assert_array_equal(w, w[:, ::-1])
    np.testing.assert_array_equal(w, w.T)
    assert w.min() > 0 and w.max() <= 1
    half = w1[: (tile + 1) // 2]
    assert np.all(np.diff(half) >= 0)  # rises monotonically to the middle
    if 2 * overlap <= tile:
        assert np.all(w1[overlap : tile - overlap] == 1)  # flat interior
        assert np.all(w1[:overlap] < 1)
        assert np.all(np.diff(w1[:overlap]) > 0)  # strictly rising ramp
        # Complementary ramps: neighbours at the regular stride sum to exactly 1.
        stride = tile - overlap
        np.testing.assert_allclose(w1[stride:] + w1[: tile - stride], 1.0, rtol=0, atol=1e-15)


def test_blend_window_ramp_is_raised_cosine() -> None:
    w1 = window_1d(16, 4)
    np.testing.assert_allclose(w1[:4], np.sin(np.pi / 2 * np.arange(1, 5) / 5) ** 2, atol=1e-15)
    np.testing.assert_array_equal(window_1d(9, 0), np.ones(9))


def test_blend_window_validation() -> None:
    with pytest.raises(BadInputError, match="overlap"):
        blend_window(8, 8)


# --- blending: partition of unity, blocked == global -----------------------------------------


@SEEDED
@given(grid=grids(), value=st.floats(-1e3, 1e3, allow_nan=False))
def test_blend_of_constant_tiles_is_constant(grid: TileGrid, value: float) -> None:
    tiles = {o: np.full((2, 3, grid.tile, grid.tile), value) for o in grid.tiles()}
    out = blend_tiles(tiles, grid, 0, grid.height, 0, grid.width)
    assert out.shape == (2, 3, grid.height, grid.width)
    np.testing.assert_allclose(out, value, rtol=1e-13, atol=1e-12)


@SEEDED
@given(grid=grids(), seed=st.integers(0, 2**32 - 1))
def test_blend_of_tiles_cut_from_image_is_image(grid: TileGrid, seed: int) -> None:
    image = np.random.default_rng(seed).standard_normal((2, grid.height, grid.width))
    whole = Block((0, 0), 0, grid.height, 0, grid.width)
    tiles = read_and_cut(image, grid, whole)
    assert all(v.shape == (2, grid.tile, grid.tile) for v in tiles.values())
    np.testing.assert_allclose(blend_tiles(tiles, grid, *whole.region), image, rtol=0, atol=1e-12)


def test_blend_on_regular_grid_needs_no_normalisation() -> None:
    """With no edge shift, raw weights sum to 1 wherever tiles overlap (complementary ramps)."""
    grid = TileGrid(3 * 24 + 8, 2 * 24 + 8, 32, 8)  # lengths = k * stride + overlap
    assert grid.tile_origins_y == (0, 24, 48) and grid.tile_origins_x == (0, 24)
    wsum = np.zeros(grid.padded_shape)
    w = blend_window(grid.tile, grid.overlap)
    for ty, tx in grid.tiles():
        wsum[ty : ty + 32, tx : tx + 32] += w
    inner = wsum[8:-8, 8:-8]  # away from the image border, which only one tile covers
    np.testing.assert_allclose(inner, 1.0, rtol=0, atol=1e-15)
    assert wsum.min() > 0 and np.any(wsum[:8] < 1)


def blend_blockwise(tiles: dict, grid: TileGrid, blocks: list[Block], lead: tuple) -> np.ndarray:
    """Assemble the image block by block, each block given only the tiles that touch it."""
    out = np.full((*lead, grid.height, grid.width), np.nan)
    for b in blocks:
        own = {o: tiles[o] for o in grid.tiles_touching(*b.region)}
        out[..., b.y0 : b.y1, b.x0 : b.x1] = blend_tiles(own, grid, *b.region)
    return out


@SEEDED
@given(
    grid=grids(),
    chunks=st.tuples(st.integers(1, 70), st.integers(1, 70)),
    per_block=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_blocked_equals_global_random(grid, chunks, per_block, seed) -> None:
    tiles = random_tiles(grid, (2,), seed)
    expected = blend_tiles(tiles, grid, 0, grid.height, 0, grid.width)
    blocks = plan_blocks(grid.height, grid.width, *chunks, chunks_per_block=per_block)
    np.testing.assert_array_equal(blend_blockwise(tiles, grid, blocks, (2,)), expected)


@pytest.mark.parametrize("chunks", [(5, 7), (64, 48), (300, 1)])
@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (256, 32), (32, 0)])
def test_blocked_equals_global_odd_chunks(chunks, tile, overlap) -> None:
    grid = TileGrid(257, 311, tile, overlap, multiple=8)
    tiles = random_tiles(grid, (), seed=tile + overlap)
    expected = blend_tiles(tiles, grid, 0, 257, 0, 311)
    blocks = plan_blocks(257, 311, *chunks)
    np.testing.assert_array_equal(blend_blockwise(tiles, grid, blocks, ()), expected)


def test_blocked_pipeline_restores_small_image() -> None:
    """Read + pad + cut + blend per block reproduces a 5 x 7 image tiled at 16."""
    grid = TileGrid(5, 7, 16, 4, multiple=8)
    image = np.random.default_rng(1).standard_normal((5, 7))
    out = np.full_like(image, np.nan)
    for b in plan_blocks(5, 7, 2, 3):
        tiles = read_and_cut(image, grid, b)
        out[b.y0 : b.y1, b.x0 : b.x1] = blend_tiles(tiles, grid, *b.region)
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-12)


def test_blend_tiles_refuses_missing_or_misshapen_tiles() -> None:
    grid = TileGrid(40, 40, 16, 4)
    tiles = random_tiles(grid, (), seed=0)
    del tiles[(0, 0)]
    with pytest.raises(ValueError, match="missing"):
        blend_tiles(tiles, grid, 0, 40, 0, 40)
    tiles = random_tiles(grid, (3,), seed=0)
    tiles[(0, 12)] = tiles[(0, 12)][:2]
    with pytest.raises(ValueError, match="shape"):
        blend_tiles(tiles, grid, 0, 40, 0, 40)


# --- blocks ----------------------------------------------------------------------------------


@SEEDED
@given(
    height=st.integers(1, 200),
    width=st.integers(1, 200),
    chunk_y=st.integers(1, 64),
    chunk_x=st.integers(1, 64),
    per_block=st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4))),
)
def test_plan_blocks_partitions_into_whole_chunks(height, width, chunk_y, chunk_x, per_block):
    blocks = plan_blocks(height, width, chunk_y, chunk_x, per_block)
    ny, nx = per_block if isinstance(per_block, tuple) else (per_block, per_block)
    count = np.zeros((height, width), dtype=int)
    for b in blocks:
        count[b.y0 : b.y1, b.x0 : b.x1] += 1
        i, j = b.index
        assert (b.y0, b.x0) == (i * chunk_y * ny, j * chunk_x * nx)
        assert b.y1 == min(b.y0 + chunk_y * ny, height) and b.x1 == min(b.x0 + chunk_x * nx, width)
        assert b.y0 % chunk_y == 0 and b.x0 % chunk_x == 0
        assert (b.y1 % chunk_y == 0 or b.y1 == height) and (b.x1 % chunk_x == 0 or b.x1 == width)
    np.testing.assert_array_equal(count, 1)  # one writer per pixel, hence per chunk
    assert [b.index for b in blocks] == sorted({b.index for b in blocks})


@pytest.mark.parametrize(
    ("args", "field"),
    [((0, 10, 4, 4), "height"), ((10, 10, 0, 4), "chunk_y"), ((10, 10, 4, 2.5), "chunk_x")],
)
def test_plan_blocks_validation(args, field) -> None:
    with pytest.raises(BadInputError, match=field):
        plan_blocks(*args)
    with pytest.raises(BadInputError, match="chunks_per_block"):
        plan_blocks(10, 10, 4, 4, chunks_per_block=(1, 0))


def test_tiling_imports_only_numpy_and_stdlib() -> None:
    """Geometry stays pure: no torch, zarr or dask (STYLE.md, imports point one way)."""
    tree = ast.parse(Path(tiling.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "operator", "dataclasses", "functools", "numpy", "bigrestore"}
