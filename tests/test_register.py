"""Rigid ITK registration (paper suppl. S1.1) on real W2S pairs and a cells3d volume.

Known rigid motions are applied with scipy to the noisy image, which is then
registered back onto its clean partner; the recovered parameters must match.
Moved images are cut from the full frame, so they carry no fill border of their own.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tifffile
from conftest import data_path, nuclei_stack
from scipy import ndimage as ndi

from bigrestore.errors import BadInputError, UsageError
from bigrestore.register.rigid import alignment_score, apply_rigid, register_rigid
from bigrestore.register.stack import apply_padding_mask, register_stack

CROP = 128  # crop origin and half-size in the 512² W2S frame: [128:384]


@pytest.fixture(scope="module")
def itk():
    return pytest.importorskip("itk")


@pytest.fixture(scope="module")
def w2s() -> tuple[np.ndarray, np.ndarray]:
    """Fields 0-1 of the validation pairs, (t, c, y, x) uint8: (low, high)."""
    return tifffile.imread(data_path("w2s/val_low.tif"))[:2], tifffile.imread(
        data_path("w2s/val_high.tif")
    )[:2]


def rigid_matrix(angle_deg: float, translation: tuple[float, ...], shape: tuple[int, ...]):
    """Fixed-index -> moving-index matrix: ITK-convention rotation about the centre, then shift.

    2D rotates (y, x) like ITK's Euler2D (x' = cos x - sin y); 3D rotates about z.
    """
    ndim = len(shape)
    a = np.radians(angle_deg)
    rot = np.eye(ndim)
    rot[-2:, -2:] = [[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]
    centre = (np.asarray(shape) - 1) / 2
    matrix = np.eye(ndim + 1)
    matrix[:ndim, :ndim] = rot
    matrix[:ndim, ndim] = centre + np.asarray(translation) - rot @ centre
    return matrix


def move(full: np.ndarray, matrix: np.ndarray, origin: tuple[int, ...], shape: tuple[int, ...]):
    """The image whose registration onto the crop at ``origin`` of ``full`` is ``matrix``."""
    inverse = np.linalg.inv(matrix)
    inverse[:-1, -1] += origin
    return ndi.affine_transform(full.astype(np.float32), inverse, output_shape=shape, order=3)


def analytic_mask(matrix: np.ndarray, shape: tuple[int, ...], slack: float) -> np.ndarray:
    """Pixels mapped into ITK's buffer [-0.5, n - 0.5] on every axis, ``slack`` px inside it."""
    idx = np.indices(shape, dtype=np.float64).reshape(len(shape), -1)
    mapped = matrix[:-1, :-1] @ idx + matrix[:-1, -1:]
    n = np.asarray(shape)[:, None]
    inside = np.all((mapped >= -0.5 + slack) & (mapped <= n - 0.5 - slack), axis=0)
    return inside.reshape(shape)


def assert_mask_matches(mask: np.ndarray, matrix: np.ndarray) -> None:
    """The valid mask is the analytic one, up to float rounding on the boundary."""
    assert mask.dtype == bool
    assert np.all(mask[analytic_mask(matrix, mask.shape, 1e-3)])
    assert not np.any(mask[~analytic_mask(matrix, mask.shape, -1e-3)])


def crop(a: np.ndarray) -> np.ndarray:
    return a[..., CROP : 3 * CROP, CROP : 3 * CROP]


def test_recovers_rotation_and_shift(itk, w2s):
    low, high = w2s
    shape = (2 * CROP, 2 * CROP)
    truth = rigid_matrix(2.0, (3.5, -2.0), shape)
    moving = move(low[0, 0], truth, (CROP, CROP), shape)
    result = register_rigid(moving, crop(high[0, 0]))

    p = result.parameters
    assert abs(p["angle_deg"] - 2.0) < 0.3
    np.testing.assert_allclose(p["translation_px"], (3.5, -2.0), atol=0.3)
    np.testing.assert_allclose(p["center_px"], (127.5, 127.5))
    np.testing.assert_allclose(result.matrix, truth, atol=0.3)
    assert result.score_after > result.score_before + 0.05
    assert result.registered.dtype == np.float32 and result.registered.shape == shape

    # The padding is the shifted-in border (bottom and left edges at their middle)
    # plus the corners rotated out of the frame.
    mask = result.valid_mask
    assert_mask_matches(mask, result.matrix)
    assert not mask[-3:, 118:138].any() and not mask[123:133, :1].any()
    assert not mask[0, -1] and not mask[-1, 0]
    assert mask[10:-10, 10:-10].all()
    assert np.all(result.registered[~mask] == 0)

    # Inside the mask the registered image is the original low crop again.
    inner = ndi.binary_erosion(mask, iterations=3)
    original = crop(low[0, 0]).astype(np.float32)
    assert alignment_score(result.registered, original, inner) > 0.95
    fixed_score = alignment_score(original, crop(high[0, 0]), inner)
    assert result.score_after > fixed_score - 0.01
    # Without noise, the registered image is the original to interpolation accuracy.
    clean = crop(high[0, 0]).astype(np.float32)
    clean_result = register_rigid(move(high[0, 0], truth, (CROP, CROP), shape), clean)
    inner_clean = ndi.binary_erosion(clean_result.valid_mask, iterations=3)
    assert alignment_score(clean_result.registered, clean, inner_clean) > 0.999
    error = np.abs(clean_result.registered - clean)[inner_clean]
    assert np.median(error) < 0.01 * np.ptp(clean)

    # The matrix is the index mapping: scipy resamples the same image with it.
    scipy_registered = ndi.affine_transform(moving, result.matrix, order=1)
    np.testing.assert_allclose(result.registered[inner], scipy_registered[inner], atol=1e-2)


def test_identity_pair_gives_zero_transform(itk, w2s):
    low, high = w2s
    result = register_rigid(crop(low[0, 0]), crop(high[0, 0]))
    assert abs(result.parameters["angle_deg"]) < 0.2
    np.testing.assert_allclose(result.parameters["translation_px"], (0, 0), atol=0.3)
    assert result.valid_mask.all()
    assert result.score_after >= result.score_before - 1e-3


def test_scale_invariant_and_moments_init(itk, w2s):
    """Per-image contrast stretch must not change the estimate (W2S pairs differ in scale)."""
    low, high = w2s
    shape = (2 * CROP, 2 * CROP)
    moving = move(low[0, 0], rigid_matrix(-1.0, (-2.5, 4.0), shape), (CROP, CROP), shape)
    fixed = crop(high[0, 0])
    base = register_rigid(moving, fixed)
    stretched = register_rigid(0.2 * moving + 50.0, fixed, init="moments")
    for result in (base, stretched):  # both about the image centre, whatever the init
        np.testing.assert_allclose(result.parameters["center_px"], (127.5, 127.5))
        assert abs(result.parameters["angle_deg"] + 1.0) < 0.3
        np.testing.assert_allclose(result.parameters["translation_px"], (-2.5, 4.0), atol=0.3)
    np.testing.assert_allclose(stretched.matrix, base.matrix, atol=0.05)


@pytest.mark.parametrize("spacing", [None, (2.0, 1.0, 1.0)])
def test_3d_rotation_and_shift(itk, spacing):
    volume = nuclei_stack().astype(np.float32)
    origin, shape = (14, 80, 80), (32, 96, 96)
    fixed = volume[14:46, 80:176, 80:176]
    truth = rigid_matrix(1.5, (1.5, -2.0, 2.5), shape)
    moving = move(volume, truth, origin, shape)
    noise = np.random.default_rng(0).normal(0, 0.1 * moving.std(), shape)
    result = register_rigid(3.0 * moving + noise, fixed, spacing=spacing)

    angles = result.parameters["angles_deg"]
    np.testing.assert_allclose(angles, (0.0, 0.0, 1.5), atol=0.3)
    np.testing.assert_allclose(result.parameters["translation_px"], (1.5, -2.0, 2.5), atol=0.3)
    assert result.score_after > result.score_before
    assert result.registered.shape == shape
    assert_mask_matches(result.valid_mask, result.matrix)
    assert not result.valid_mask[-1].any()  # +1.5 px in z: the last slice maps outside


def test_register_stack_planes_share_transform_across_channels(itk, w2s):
    low, high = w2s
    shape = (2 * CROP, 2 * CROP)
    shifts = [(2.0, 3.0), (-3.0, 1.5)]
    moving = np.stack(
        [
            [
                move(low[t, c], rigid_matrix(0.0, shifts[t], shape), (CROP, CROP), shape)
                for c in (0, 1)
            ]
            for t in (0, 1)
        ]
    )
    fixed = crop(high[:, :2]).astype(np.float32)
    out = register_stack(moving, fixed, "tcyx", mode="plane", reference_channel=0)

    assert out.indices == [(0,), (1,)]
    assert out.registered.shape == fixed.shape and out.valid_mask.shape == fixed.shape
    for t, result in enumerate(out.results):
        np.testing.assert_allclose(result.parameters["translation_px"], shifts[t], atol=0.3)
        np.testing.assert_array_equal(out.registered[t, 0], result.registered)
        other, other_mask = apply_rigid(moving[t, 1], result.matrix)
        np.testing.assert_array_equal(out.registered[t, 1], other)
        np.testing.assert_array_equal(out.valid_mask[t, 1], result.valid_mask)
        np.testing.assert_array_equal(other_mask, result.valid_mask)
        # Channel 1 is aligned as well as the original pair; moved, it was not.
        original = alignment_score(crop(low[t, 1]), fixed[t, 1], result.valid_mask)
        aligned = alignment_score(out.registered[t, 1], fixed[t, 1], result.valid_mask)
        unaligned = alignment_score(moving[t, 1], fixed[t, 1], result.valid_mask)
        assert aligned > original - 0.02 and aligned > unaligned + 0.05


def test_register_stack_volume_mode(itk):
    volume = nuclei_stack()[14:38, 80:144, 80:144].astype(np.float32)
    shape = volume.shape
    truth = rigid_matrix(0.0, (1.0, 2.0, -1.5), shape)
    moving_ch = ndi.affine_transform(volume, np.linalg.inv(truth), order=3)
    moving = np.stack([moving_ch, 0.5 * moving_ch])
    fixed = np.stack([volume, volume])
    out = register_stack(moving, fixed, "czyx", mode="volume", reference_channel=1)
    assert out.indices == [()] and len(out.results) == 1
    np.testing.assert_allclose(
        out.results[0].parameters["translation_px"], (1.0, 2.0, -1.5), atol=0.3
    )
    np.testing.assert_allclose(out.registered[1], 0.5 * out.registered[0], rtol=1e-4, atol=1e-2)


def test_register_stack_rejects_bad_arguments(itk):
    a = np.zeros((2, 16, 16), dtype=np.float32)
    with pytest.raises(UsageError):
        register_stack(a, a, "tyx", mode="volume")
    with pytest.raises(UsageError):
        register_stack(a, a, "tyx", mode="slab")
    with pytest.raises(BadInputError):
        register_stack(a, a, "yxt")
    with pytest.raises(UsageError):
        register_stack(a, a, "cyx", reference_channel=2)
    with pytest.raises(BadInputError):
        register_rigid(a[0], a[0, :8])
    with pytest.raises(BadInputError, match="constant"):
        register_rigid(a[0], np.eye(16, dtype=np.float32), metric="mattes")


def test_apply_padding_mask_keeps_dtype_and_zeroes_outside():
    reference = np.arange(1, 17, dtype=np.uint16).reshape(4, 4)
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:, :3] = True
    out = apply_padding_mask(reference, mask)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[mask], reference[mask])
    assert np.all(out[~mask] == 0)
    assert reference.min() == 1  # input untouched
    with pytest.raises(BadInputError):
        apply_padding_mask(reference, mask[:3])


def test_alignment_score_is_pearson_and_scale_invariant():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(32, 32))
    b = a + 0.5 * rng.normal(size=(32, 32))
    assert alignment_score(a, a) == pytest.approx(1.0)
    assert alignment_score(a, -3 * a + 7) == pytest.approx(-1.0)
    assert alignment_score(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert alignment_score(a, 4 * b + 2) == pytest.approx(alignment_score(a, b))
    mask = np.zeros_like(a, dtype=bool)
    mask[:8] = True
    assert alignment_score(a, b, mask) == pytest.approx(
        np.corrcoef(a[:8].ravel(), b[:8].ravel())[0, 1]
    )
    assert alignment_score(a, np.ones_like(a)) == 0.0


def test_missing_itk_asks_for_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "itk", None)  # makes `import itk` raise ImportError
    with pytest.raises(UsageError, match=r"bigrestore\[register\]"):
        register_rigid(np.zeros((16, 16)), np.zeros((16, 16)))
