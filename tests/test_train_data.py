"""Training data path: config validation, pair checks, region split, lazy bounded patch reads,
augmentation and atomic checkpoints. Fast: no training here (see test_train.py)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from bigrestore.cli import cli
from bigrestore.errors import BadInputError, MissingInputError
from bigrestore.io.meta import default_meta
from bigrestore.io.ngff import write_metadata
from bigrestore.io.write import create_level0, write_image
from bigrestore.train import checkpoint as state
from bigrestore.train.augment import augment_pair
from bigrestore.train.config import AugmentSettings, TrainConfig, load_config
from bigrestore.train.patches import (
    STAT_PIXELS,
    PatchBatches,
    PatchReader,
    draw_patch,
    fixed_patches,
)
from bigrestore.train.stores import make_sources, open_pair, split_region

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _store(path: Path, data: np.ndarray, axes: str, names: tuple[str, ...] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(
        path, data, default_meta(axes, names), chunks=tuple(min(n, 32) for n in data.shape)
    )


def _pair(
    tmp_path: Path, shape=(3, 2, 96, 96), axes="tcyx", seed=0, names=None
) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    high = rng.integers(0, 200, shape).astype(np.uint16)
    low = (high + rng.integers(0, 50, shape)).astype(np.uint16)
    return _store(tmp_path / "low.zarr", low, axes, names), _store(
        tmp_path / "high.zarr", high, axes, names
    )


# ----------------------------------------------------------------------------- config


def test_presets_load_and_round_trip():
    paper = load_config(CONFIGS / "paper.yaml")
    assert (paper.lr, paper.batch, paper.weight_decay, paper.patch) == (2e-4, 8, 0.0, 256)
    assert (paper.schedule.T, paper.schedule.s) == (200, 8e-3)
    unet = paper.unet()
    assert (unet.base_channels, unet.channel_mult, unet.blocks_per_level) == (64, (1, 2, 4, 8), 2)
    assert (unet.attn_resolutions, unet.dropout, unet.train_resolution) == ((16,), 0.2, 256)
    assert paper.val_samples == 8 and paper.val_sampler == "ancestral"
    assert paper.augment.flip and paper.augment.rot90 and paper.augment.blur_p > 0
    small = load_config(CONFIGS / "cpu-small.yaml")
    assert small.time_budget_minutes <= 40 and small.unet().base_channels <= 32
    assert small.patch <= 96 and small.schedule == paper.schedule
    for config in (paper, small):
        assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("lrr: 0.1\n", "lrr"),
        ("model:\n  widht: 8\n", "model.widht"),
        ("augment:\n  blur: 1\n", "augment.blur"),
        ("lr: -1\n", "lr"),
        ("patch: 30\n", "patch"),
        ("val_sampler: euler\n", "val_sampler"),
        ("schedule: {T: 0}\n", "schedule.T"),
        ("p_low: 99.9\np_high: 1\n", "p_high"),
        ("model: {channel_mult: 3}\n", "model.channel_mult"),
        ("precision: fp16\n", "precision"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BadInputError) as info:
        load_config(path)
    assert "bad.yaml" in str(info.value) and f"{field}:" in str(info.value)


def test_config_typo_exits_65_through_the_cli(tmp_path):
    low, high = _pair(tmp_path)
    path = tmp_path / "typo.yaml"
    path.write_text("bacth: 4\n")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--low",
            str(low),
            "--high",
            str(high),
            "--config",
            str(path),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert result.exit_code == 65, result.output
    assert "bacth" in result.output and "unknown key" in result.output
    assert not (tmp_path / "m").exists()
    missing = CliRunner().invoke(
        cli,
        [
            "train",
            "--low",
            str(low),
            "--high",
            str(high),
            "--config",
            str(tmp_path / "nope.yaml"),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert missing.exit_code == 66


# ----------------------------------------------------------------------------- stores and split


def test_mismatched_pair_is_refused_naming_both_stores(tmp_path):
    low = _store(tmp_path / "a.zarr", np.zeros((2, 64, 64), np.uint8), "tyx")
    high = _store(tmp_path / "b.zarr", np.zeros((2, 64, 48), np.uint8), "tyx")
    with pytest.raises(BadInputError) as info:
        open_pair(low, high)
    message = str(info.value)
    assert (
        "a.zarr" in message
        and "b.zarr" in message
        and "(2, 64, 64)" in message
        and "(2, 64, 48)" in message
    )
    other = _store(tmp_path / "c.zarr", np.zeros((2, 64, 64), np.uint8), "zyx")
    with pytest.raises(BadInputError, match="axes"):
        open_pair(low, other)
    with pytest.raises(MissingInputError):
        open_pair(low, tmp_path / "none.zarr")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--low",
            str(low),
            "--high",
            str(high),
            "--config",
            str(CONFIGS / "cpu-small.yaml"),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert result.exit_code == 65 and "b.zarr" in result.output


def test_channels_by_name_or_index(tmp_path):
    low, high = _pair(tmp_path, names=("dapi", "actin"))
    assert open_pair(low, high).channels == ((0, 0), (1, 1))
    assert open_pair(low, high, ["actin"]).channels == ((1, 1),)
    assert open_pair(low, high, ["0"]).channels == ((0, 0),)
    with pytest.raises(BadInputError, match="tubulin"):
        open_pair(low, high, ["tubulin"])
    with pytest.raises(BadInputError, match="--channel"):
        open_pair(low, high, ["5"])


def test_region_split_never_shares_pixels(tmp_path):
    pair = open_pair(*_pair(tmp_path))  # 3 fields x 2 channels
    train, val = split_region(pair, 32, 0.25)
    assert {p[0] for p in train.planes} == {0, 1} and {p[0] for p in val.planes} == {2}
    assert len(val.planes) == 2  # both channels of the held-out field
    single = open_pair(*_pair(tmp_path / "s", shape=(96, 80), axes="yx"))
    train, val = split_region(single, 32, 0.1)
    assert train.y[1] <= val.y[0] and val.y[1] - val.y[0] >= 32 and train.y[1] - train.y[0] >= 32
    with pytest.raises(BadInputError, match="val-low"):
        split_region(single, 64, 0.1)
    reader = PatchReader(1.0, 99.8)
    a = fixed_patches([val], 5, 32, seed=3, foreground_bias=0.5, reader=reader)
    b = fixed_patches([val], 5, 32, seed=3, foreground_bias=0.5, reader=reader)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (5, 1, 32, 32)
    trains, vals = make_sources([pair], None, 32, 0.0)
    assert vals == [] and len(trains[0].planes) == 6


def test_all_nan_store_is_refused(tmp_path):
    data = np.full((64, 64), np.nan, np.float32)
    low = _store(tmp_path / "l.zarr", data, "yx")
    high = _store(tmp_path / "h.zarr", data, "yx")
    sources, _ = make_sources([open_pair(low, high)], None, 32, 0.0)
    with pytest.raises(BadInputError, match="NaN"):
        draw_patch(PatchReader(1.0, 99.8), sources, np.random.default_rng(0), 32, 0.0)


# ----------------------------------------------------------------------------- lazy reads


class _CountingArray:
    """A zarr array stand-in that records the number of elements of every read."""

    def __init__(self, array, log):
        self.array, self.log = array, log
        self.shape = array.shape

    def __getitem__(self, index):
        out = self.array[index]
        self.log.append(int(np.asarray(out).size))
        return out


class _CountingReader(PatchReader):
    def __init__(self, log):
        super().__init__(1.0, 99.8)
        self.log = log

    def open_array(self, path):
        return _CountingArray(zarr.open_array(path, mode="r"), self.log)


def test_patch_reads_are_bounded_regions(tmp_path):
    low, high = _pair(tmp_path, shape=(4, 2, 96, 96))
    sources, _ = make_sources([open_pair(low, high)], None, 32, 0.0)
    log: list[int] = []
    reader = _CountingReader(log)
    batches = PatchBatches(
        sources,
        start=0,
        stop=6,
        batch=4,
        patch=32,
        seed=0,
        augment=AugmentSettings(),
        foreground_bias=0.5,
        p_low=1.0,
        p_high=99.8,
    )
    for step in range(6):
        cond, target = batches.make_batch(reader, step)
        assert cond.shape == target.shape == (4, 1, 32, 32)
        assert torch.isfinite(cond).all() and cond.dtype == torch.float32
    patch_reads = [n for n in log if n == 32 * 32]
    stat_reads = [n for n in log if n != 32 * 32]
    assert len(patch_reads) >= 2 * 6 * 4 and max(log) <= max(96 * 96, STAT_PIXELS)
    assert len(stat_reads) <= 2 * 8  # each of the 8 planes' statistics read once per store


def test_memory_does_not_grow_with_store_size(tmp_path):
    """A 20k x 20k uint16 pair (800 MB per plane if loaded) is sampled with a bounded peak."""
    for name in ("low", "high"):
        array = create_level0(
            tmp_path / f"{name}.zarr", (20000, 20000), "uint16", "yx", chunks=(2048, 2048)
        )
        array[9000:9200, 4000:4200] = np.random.default_rng(0).integers(100, 1000, (200, 200))
        write_metadata(
            zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="a"),
            default_meta("yx"),
            1,
            "0.5",
            np.dtype("uint16"),
        )
    sources, _ = make_sources(
        [open_pair(tmp_path / "low.zarr", tmp_path / "high.zarr")], None, 64, 0.0
    )
    batches = PatchBatches(
        sources,
        start=0,
        stop=3,
        batch=8,
        patch=64,
        seed=0,
        augment=AugmentSettings(),
        foreground_bias=1.0,
        p_low=1.0,
        p_high=99.8,
    )
    tracemalloc.start()
    try:
        steps = [step for step, _, _ in batches]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert steps == [0, 1, 2]
    assert peak < 64e6, f"peak traced memory {peak / 1e6:.0f} MB"


def test_batches_are_keyed_by_step_whatever_the_worker_count(tmp_path):
    low, high = _pair(tmp_path)
    sources, _ = make_sources([open_pair(low, high)], None, 32, 0.0)
    settings = dict(
        batch=2,
        patch=32,
        seed=5,
        augment=AugmentSettings(blur_p=0.5),
        foreground_bias=0.3,
        p_low=1.0,
        p_high=99.8,
    )
    direct = {s: (c, t) for s, c, t in PatchBatches(sources, start=2, stop=7, **settings)}
    loader = torch.utils.data.DataLoader(
        PatchBatches(sources, start=2, stop=7, **settings), batch_size=None, num_workers=2
    )
    pooled = list(loader)
    assert [s for s, _, _ in pooled] == [2, 3, 4, 5, 6]
    for s, c, t in pooled:
        torch.testing.assert_close(c, direct[s][0], rtol=0, atol=0)
        torch.testing.assert_close(t, direct[s][1], rtol=0, atol=0)
    assert not torch.equal(direct[2][0], direct[3][0])


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_keeps_the_pair_registered():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16)).astype(np.float32)
    seen = set()
    for seed in range(20):
        cond, target = augment_pair(
            image, image.copy(), np.random.default_rng(seed), AugmentSettings()
        )
        np.testing.assert_array_equal(cond, target)
        seen.add(cond.tobytes())
    assert len(seen) > 4  # flips and rotations do happen
    settings = AugmentSettings(flip=False, rot90=False, blur_p=1.0, blur_sigma=(1.0, 2.0))
    cond, target = augment_pair(image, image.copy(), np.random.default_rng(1), settings)
    np.testing.assert_array_equal(target, image)
    assert cond.std() < image.std() * 0.8  # only the condition is blurred


# ----------------------------------------------------------------------------- checkpoints


def _tiny_state():
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return net, optimizer, scheduler


def test_checkpoint_round_trip_and_kill_during_write(tmp_path, monkeypatch):
    net, optimizer, scheduler = _tiny_state()
    state.save_state(tmp_path, net, None, optimizer, scheduler, {"step": 1, "note": "first"})
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    optimizer.step()

    def killed(tensors, path):  # a partial file, then the process "dies"
        Path(path).write_bytes(b"\x00" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(state, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        state.save_state(tmp_path, net, None, optimizer, scheduler, {"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest.json",
        "state-00000001.json",
        "state-00000001.safetensors",
    ]
    fresh, fresh_opt, fresh_sched = _tiny_state()
    record = state.load_state(tmp_path, fresh, None, fresh_opt, fresh_sched)
    assert record["step"] == 1 and record["note"] == "first"
    for key, value in saved.items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    assert fresh_sched.last_epoch == 1
    assert isinstance(fresh_opt.param_groups[0]["betas"], tuple)
    state.save_state(tmp_path, net, None, optimizer, scheduler, {"step": 2})
    assert state.read_record(tmp_path)["step"] == 2
    assert not (tmp_path / "state-00000001.json").exists()


# ----------------------------------------------------------------------------- target frame


def _camera_pair(tmp_path: Path, side: int = 128) -> tuple[Path, Path]:
    """A clean image stored at one scale and its low-light camera image at another:
    low = 5 * Poisson(20 * clean01 + 2) + 300, as a real pair from two acquisitions."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    clean = gaussian_filter(rng.random((side, side)), 3)
    clean01 = (clean - clean.min()) / (clean.max() - clean.min())
    high = (clean01 * 4000).astype(np.uint16)
    low = (5 * rng.poisson(20 * clean01 + 2) + 300).astype(np.uint16)
    return _store(tmp_path / "low.zarr", low, "yx"), _store(tmp_path / "high.zarr", high, "yx")


def _cond_on_target(reader: PatchReader, sources, side: int) -> tuple[float, float]:
    """Least-squares slope and intercept of the condition on the target, whole plane."""
    cond, target = draw_patch(reader, sources, np.random.default_rng(0), side, 0.0)
    slope, intercept = np.polyfit(target.ravel(), cond.ravel(), 1)
    return float(slope), float(intercept)


def test_target_frame_low_makes_the_target_the_noise_free_input(tmp_path):
    low, high = _camera_pair(tmp_path)
    sources, _ = make_sources([open_pair(low, high)], None, 128, 0.0)
    # low: the condition is the target plus zero-mean noise, whatever the two scales were.
    slope, intercept = _cond_on_target(PatchReader(1.0, 99.8, target_frame="low"), sources, 128)
    assert abs(slope - 1) < 0.02 and abs(intercept) < 0.02
    # own (the paper's): each plane by its own percentiles, the map between them is not the
    # identity, and the network would have to guess it from every patch.
    slope, intercept = _cond_on_target(PatchReader(1.0, 99.8, target_frame="own"), sources, 128)
    assert abs(slope - 1) > 0.1


def test_fit_to_low_refuses_planes_that_do_not_show_the_same_image():
    from bigrestore.train.patches import fit_to_low

    rng = np.random.default_rng(0)
    high = rng.random(4096)
    a, b = fit_to_low(3 * high + 10 + rng.normal(0, 0.5, high.size), high, "pair")
    assert abs(a - 3) < 0.1 and abs(b - 10) < 0.1
    with pytest.raises(BadInputError, match="slope.*-"):
        fit_to_low(-high, high, "swapped pair")
    with pytest.raises(BadInputError, match="flat"):
        fit_to_low(high, np.ones_like(high), "empty pair")


def test_init_from_takes_the_models_target_frame_unless_the_config_sets_one(tmp_path):
    import json
    import shutil

    from bigrestore.run.settings import bundled_model_path
    from bigrestore.train.init import adopt_model

    unset = load_config(CONFIGS / "finetune.yaml")
    assert unset.target_frame is None and unset.frame == "own"

    def model_with_frame(name: str, frame: str | None) -> Path:
        path = tmp_path / name
        shutil.copytree(bundled_model_path(), path)
        meta = json.loads((path / "model.json").read_text())
        meta["normalization"].pop("target_frame", None)
        if frame is not None:
            meta["normalization"]["target_frame"] = frame
        (path / "model.json").write_text(json.dumps(meta))
        return path

    assert adopt_model(unset, model_with_frame("old", None))[0].frame == "own"  # before the key
    low_model = model_with_frame("low", "low")
    assert adopt_model(unset, low_model)[0].frame == "low"
    explicit = unset.replace(target_frame="own")
    assert adopt_model(explicit, low_model)[0].frame == "own"
    assert adopt_model(unset, Path(bundled_model_path()))[0].frame == "low"  # the generalist
    assert load_config(CONFIGS / "cpu-generalist.yaml").frame == "low"


def test_p128_leg_config_is_the_generalist_recipe_on_larger_patches():
    """The 128²-patch leg changes patch size, batch and length only, so its model continues
    the bundled recipe (objective, network, frame, augmentation) rather than starting another."""
    base = load_config(CONFIGS / "cpu-generalist.yaml").model_dump()
    p128 = load_config(CONFIGS / "cpu-generalist-p128.yaml").model_dump()
    changed = {k for k in base if base[k] != p128[k]}
    assert changed == {"patch", "batch", "epochs", "steps_per_epoch"}
    assert p128["patch"] == 128 and p128["patch"] * p128["patch"] * p128["batch"] > 64 * 64 * 16
