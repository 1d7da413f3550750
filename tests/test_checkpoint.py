"""Model files: save -> load round trip, integrity checks and refusal of edited or corrupt files."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest
import torch

import bigrestore
from bigrestore.errors import (
    BadInputError,
    CannotCreateOutputError,
    IncompatibleModelError,
    MissingInputError,
)
from bigrestore.model.files import load_model, model_hash, save_model
from bigrestore.model.unet import ConditionalUNet, UNetConfig

SPEC = {
    "objective": "diffusion",
    "schedule": {"T": 200, "s": 0.008},
    "normalization": {
        "method": "percentile",
        "p_low": 1.0,
        "p_high": 99.8,
        "target": {"low": 102.5, "high": 3071.25},
    },
    "provenance": {"data": "synthetic", "epochs": 1},
}


def make_net(seed: int = 0) -> ConditionalUNet:
    torch.manual_seed(seed)
    net = ConditionalUNet(
        UNetConfig(base_channels=8, channel_mult=(1, 2), train_resolution=32, channels_per_head=8)
    )
    with torch.no_grad():  # move off the zero-initialised gains so the output is informative
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.uniform_(0.5, 1.5)
    return net.eval()


def run(net: ConditionalUNet) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    cond, y_t = torch.randn(2, 1, 16, 24, generator=g), torch.randn(2, 1, 16, 24, generator=g)
    with torch.no_grad():
        return net(cond, y_t, torch.tensor([0.3, 0.9]))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, ConditionalUNet, str]:
    net = make_net()
    directory = tmp_path / "model"
    digest = save_model(directory, net, SPEC)
    return directory, net, digest


def edit_json(directory: Path, **changes: object) -> None:
    path = directory / "model.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_round_trip_is_bit_identical(saved: tuple[Path, ConditionalUNet, str]) -> None:
    directory, net, digest = saved
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.safetensors"]
    torch.manual_seed(
        99
    )  # a fresh net would draw other Fourier frequencies: they must come from the file
    loaded, info = load_model(directory)
    meta = info.meta
    assert not loaded.training
    assert loaded.config == net.config
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded.emb_fourier.freqs, net.emb_fourier.freqs)
    assert torch.equal(run(loaded), run(net))
    assert torch.count_nonzero(run(net)) > 0
    assert {k: meta[k] for k in SPEC} == SPEC
    assert meta["format"] == "bigrestore-model" and meta["format_version"] == 1
    assert meta["unet"] == net.config.to_dict()
    assert (
        meta["weights_sha256"]
        == hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    )
    assert digest == model_hash(directory) == model_hash(directory / "model.json")
    loaded_json, _ = load_model(directory / "model.json")
    assert torch.equal(run(loaded_json), run(net))


def test_model_hash_tracks_weights_and_settings(tmp_path: Path) -> None:
    net = make_net(0)
    a = save_model(tmp_path / "a", net, SPEC)
    assert save_model(tmp_path / "a2", net, SPEC) == a  # same model, same hash
    assert save_model(tmp_path / "b", make_net(1), SPEC) != a
    other_norm = {**SPEC, "normalization": {"target": {"low": 0.0, "high": 1.0}}}
    assert save_model(tmp_path / "c", net, other_norm) != a


def test_overwrite_leaves_no_temporary_files(saved: tuple[Path, ConditionalUNet, str]) -> None:
    directory, _, _ = saved
    digest = save_model(directory, make_net(3), {"objective": "regression"})
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.safetensors"]
    assert model_hash(directory) == digest
    meta = load_model(directory)[1].meta
    assert meta["objective"] == "regression"
    assert torch.equal(run(load_model(directory)[0]), run(make_net(3)))


def test_missing_inputs(tmp_path: Path, saved: tuple[Path, ConditionalUNet, str]) -> None:
    with pytest.raises(MissingInputError, match="nope"):
        load_model(tmp_path / "nope")
    directory, _, _ = saved
    (directory / "model.safetensors").unlink()
    with pytest.raises(IncompatibleModelError, match="model.safetensors"):
        load_model(directory)
    (directory / "model.json").unlink()
    with pytest.raises(IncompatibleModelError, match="model.json"):
        load_model(directory)


def test_flipped_byte_in_weights_is_refused(saved: tuple[Path, ConditionalUNet, str]) -> None:
    directory, _, _ = saved
    path = directory / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IncompatibleModelError, match="sha256"):
        load_model(directory)


def test_unreadable_weights_with_matching_hash_are_refused(
    saved: tuple[Path, ConditionalUNet, str],
) -> None:
    directory, _, _ = saved
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # truncated header
    edit_json(directory, weights_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(IncompatibleModelError, match="safetensors"):
        load_model(directory)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format_version": 2}, "format_version"),
        ({"format_version": "1"}, "format_version"),
        ({"format": "palette"}, "format"),
        ({"extra": 1}, "extra"),
        ({"objective": "gan"}, "objective"),
        ({"schedule": None}, "schedule"),
        ({"weights_sha256": "abc"}, "weights_sha256"),
    ],
)
def test_edited_json_is_refused(
    saved: tuple[Path, ConditionalUNet, str], changes: dict, match: str
) -> None:
    directory, _, _ = saved
    edit_json(directory, **changes)
    with pytest.raises(IncompatibleModelError, match=match):
        load_model(directory)


def test_architecture_mismatch_is_refused(saved: tuple[Path, ConditionalUNet, str]) -> None:
    directory, net, _ = saved
    unet = net.config.to_dict()
    edit_json(directory, unet={**unet, "base_channels": 16})  # weights no longer fit: wrong shapes
    with pytest.raises(IncompatibleModelError, match="expected torch.float32"):
        load_model(directory)
    edit_json(directory, unet={**unet, "blocks_per_level": 3})  # tensors missing from the file
    with pytest.raises(IncompatibleModelError, match="missing"):
        load_model(directory)
    edit_json(directory, unet={**unet, "dropuot": 0.2})
    with pytest.raises(IncompatibleModelError, match="dropuot"):
        load_model(directory)
    (directory / "model.json").write_text("{not json")
    with pytest.raises(IncompatibleModelError, match="JSON"):
        load_model(directory)


def test_bad_spec_is_refused_before_writing(tmp_path: Path) -> None:
    net = make_net()
    for spec, match in [
        ({**SPEC, "notes": "x"}, "notes"),
        ({**SPEC, "format_version": 3}, "format_version"),
        ({"objective": "diffusion"}, "schedule"),
        ({**SPEC, "provenance": {"when": object()}}, "JSON"),
        ({**SPEC, "normalization": {"target": {"low": float("nan"), "high": 1.0}}}, "finite"),
    ]:
        with pytest.raises(BadInputError, match=match):
            save_model(tmp_path / "m", net, spec)
        assert not (tmp_path / "m" / "model.json").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(CannotCreateOutputError):
        save_model(tmp_path / "file", net, SPEC)


def _torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in ("torch", "pickle")
    ]


def test_package_never_unpickles() -> None:
    """No pickle import anywhere; torch.load only with weights_only=True, and never in checkpoint.py."""
    root = Path(bigrestore.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert any(f.name == "checkpoint.py" for f in files)
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(
                    n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names
                ), path
        for call in _torch_load_calls(tree):
            assert path.name != "checkpoint.py", "checkpoint.py must read safetensors only"
            safe = [k for k in call.keywords if k.arg == "weights_only"]
            assert (
                safe and isinstance(safe[0].value, ast.Constant) and safe[0].value.value is True
            ), f"{path}:{call.lineno}: torch.load without weights_only=True"


def test_scanner_detects_unsafe_load() -> None:
    unsafe = ast.parse("import torch\nstate = torch.load(p)\nok = torch.load(p, weights_only=True)")
    calls = _torch_load_calls(unsafe)
    assert len(calls) == 2
    assert [any(k.arg == "weights_only" for k in c.keywords) for c in calls] == [False, True]


def test_repeated_saves_give_identical_files(tmp_path: Path) -> None:
    """The weights file's bytes must not depend on the save (the model hash is built on them)."""
    net = make_net(0)
    hashes = {save_model(tmp_path / f"m{i}", net, SPEC) for i in range(12)}
    assert len(hashes) == 1


def test_model_files_get_the_umask_mode_not_private(tmp_path: Path) -> None:
    """mkstemp's 0600 must not leak: a model on a shared disk is read by other users."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        save_model(tmp_path / "m", make_net(0), SPEC)
    finally:
        os.umask(old)
    for name in ("model.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o644
