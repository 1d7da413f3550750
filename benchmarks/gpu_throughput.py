"""Achieved FLOP/s of the sampling loop on one device, by network and batch size.

    python benchmarks/gpu_throughput.py --out gpu_out/throughput.json          # on a GPU
    python benchmarks/gpu_throughput.py --device cpu --quick --out /tmp/t.json  # smoke test

Networks: the bundled model (bigrestore/data/model) and the ``configs/paper.yaml`` U-Net with
random weights (57.8 M parameters; speed does not depend on the weights), each at the tile a run
uses by default (twice its training patch: 128² and 512²). FLOPs per network evaluation are
counted once with ``torch.utils.flop_counter.FlopCounterMode`` on a forward pass of one tile
(convolutions and matrix products, 2 FLOPs per multiply-add); a batch costs that times its size.

Per batch size three rates are measured, each over about ``--seconds`` after a warm-up:

* ``network``: network calls alone (inference mode, the run's autocast: bf16 on a GPU);
* ``sampling``: ``sample_repeated`` with DDIM (eta 1, ``--steps`` steps) on batch/8 tiles of 8
  samples each in antithetic pairs (one tile of ``batch`` samples below 8), as a run lays out
  a network batch: the run's sampling loop, its position-keyed noise included (until
  2026-11-30 one sample per tile, so no pair shared its noise);
* ``noise``: the position-keyed noise alone (numpy Philox + Box-Muller on the CPU, one block
  per item and step), in ms per item and step: the part of the loop a faster GPU does not speed.

The batch ``auto`` picks (bigrestore.run.batching.resolve_batch) is measured as well, and at
that batch, for the bundled model, the variants: NCHW instead of channels-last activations, a
CUDA graph of the network call (captured by hand), ``torch.compile`` and ``torch.compile``
with CUDA graphs (mode reduce-overhead), each timed on network calls with the compile time
reported separately. Keep a variant only where it measures faster.

Peak: the fraction of peak is against 790 TFLOP/s, what an 8192³ bf16 matrix product ran at
through PyTorch on this workplace's H200 (769-798 TFLOP/s, /work/.library/device/KINDS.md);
NVIDIA's H200 SXM datasheet gives 989 TFLOP/s dense bf16 (1979 with 2:4 sparsity). Other
devices: ``--peak-tflops`` (no fraction without it). Writes JSON (``--out``) and prints markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bigrestore.devices import autocast_dtype, network_autocast
from bigrestore.diffusion.noise import NoiseStream, TileKey, batched_noise
from bigrestore.diffusion.repeated import sample_repeated
from bigrestore.diffusion.samplers import SamplerSettings
from bigrestore.diffusion.schedule import Schedule
from bigrestore.model.files import load_model
from bigrestore.model.unet import ConditionalUNet
from bigrestore.run.batching import resolve_batch
from bigrestore.run.settings import bundled_model_path
from bigrestore.train.config import load_config

REPO = Path(__file__).resolve().parents[1]
H200_PEAK_TFLOPS = 790.0
GPU_BATCHES = {"bundled": [8, 32, 128], "paper": [1, 4]}
QUICK_BATCHES = {"bundled": [1, 2], "paper": [1]}


def build(name: str, device: torch.device, quick: bool) -> tuple[torch.nn.Module, int, Schedule]:
    """The network, its default run tile (twice the training patch; 32 with --quick) and its
    schedule."""
    if name == "bundled":
        net, info = load_model(bundled_model_path(), device=device)
        schedule = info.schedule
    else:
        config = load_config(REPO / "configs" / "paper.yaml")
        torch.manual_seed(0)
        net = ConditionalUNet(config.unet()).to(device)
        schedule = config.schedule
    tile = 32 if quick else 2 * net.config.train_resolution
    return net.eval(), tile, schedule


def flops_per_item(net: torch.nn.Module, tile: int, device: torch.device) -> int:
    """FLOPs of one network evaluation of one tile (FlopCounterMode, fp32 shapes)."""
    cond = torch.zeros((1, net.config.cond_channels, tile, tile), device=device)
    y_t = torch.zeros((1, net.config.out_channels, tile, tile), device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(cond, y_t, torch.full((1,), 0.5, device=device))
    return int(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], Any], device: torch.device, seconds: float) -> tuple[float, int]:
    """Seconds per call of ``call`` (after one warm-up call), over at least ``seconds``."""
    call()
    sync(device)
    calls, started = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - started < seconds:
        call()
        calls += 1
        if device.type == "cuda" and calls % 8 == 0:
            sync(device)
    sync(device)
    return (time.perf_counter() - started) / calls, calls


def inputs(net: torch.nn.Module, batch: int, tile: int, device: torch.device) -> tuple:
    cfg = net.config
    generator = torch.Generator().manual_seed(batch)
    cond = torch.randn((batch, cfg.cond_channels, tile, tile), generator=generator).to(device)
    y_t = torch.randn((batch, cfg.out_channels, tile, tile), generator=generator).to(device)
    return cond, y_t, torch.full((batch,), 0.5, device=device)


def network_call(
    net: Callable, args: tuple, device: torch.device, autocast: torch.dtype | None
) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode(), network_autocast(device.type, autocast):
            return net(*args)

    return call


def measure_batch(setup: dict[str, Any], batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """network, sampling and noise rates at ``batch`` (see the module docstring)."""
    net, tile, device, autocast = setup["net"], setup["tile"], setup["device"], setup["autocast"]
    flops = setup["flops_per_item"]
    row: dict[str, Any] = {"batch": batch}
    try:
        inp = inputs(net, batch, tile, device)
        per_call, calls = timed(network_call(net, inp, device, autocast), device, args.seconds)
        row.update(network_items_per_s=batch / per_call, network_calls=calls)
        row["network_tflops"] = flops * batch / per_call / 1e12
        keys = [TileKey(0, 0, 0, 0, 96 * i, 0) for i in range(batch)]
        sampler = SamplerSettings(sampler="ddim", steps=args.steps, eta=1.0)
        # A run's layout: 8 samples per tile in antithetic pairs (fewer when the batch is).
        tiles = max(1, batch // 8)
        samples = batch // tiles

        def loop() -> Any:
            return sample_repeated(
                net, inp[0][:tiles], keys[:tiles], samples, setup["schedule"], sampler,
                device=device, max_batch=batch, autocast_dtype=autocast,
            )  # fmt: skip

        per_loop, _ = timed(loop, device, args.seconds)
        row["sampling_items_per_s"] = batch * args.steps / per_loop
        row["sampling_tflops"] = flops * batch * args.steps / per_loop / 1e12
        streams = [NoiseStream(k, 0) for k in keys]
        shape = (net.config.out_channels, tile, tile)
        per_draw, _ = timed(lambda: batched_noise(streams, shape, device), device, args.seconds / 4)
        row["noise_ms_per_item_step"] = per_draw / batch * 1e3
    except RuntimeError as exc:  # out of memory at this batch: report it, go on
        row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    peak = setup["peak_tflops"]
    for rate in ("network", "sampling"):
        if peak and f"{rate}_tflops" in row:
            row[f"{rate}_fraction_of_peak"] = row[f"{rate}_tflops"] / peak
    return row


def graphed(net: torch.nn.Module, args: tuple, autocast: torch.dtype | None) -> Callable[[], Any]:
    """The network call on ``args`` captured once as a CUDA graph; returns its replay."""
    call = network_call(net, args, args[0].device, autocast)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph.replay


def variant_call(name: str, setup: dict[str, Any], inp: tuple) -> Callable[[], Any]:
    """The network call of one variant (may compile: the first call pays for it)."""
    net, device, autocast = setup["net"], setup["device"], setup["autocast"]
    if name == "nchw":
        net.channels_last = False
        return network_call(net, inp, device, autocast)
    if name == "cuda_graph":
        return graphed(net, inp, autocast)
    mode = "reduce-overhead" if name == "compile_cuda_graphs" else None
    return network_call(torch.compile(net, mode=mode), inp, device, autocast)


def measure_variants(
    setup: dict[str, Any], batch: int, names: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Network calls at ``batch`` for each variant, with its preparation (compile) time."""
    rows = []
    inp = inputs(setup["net"], batch, setup["tile"], setup["device"])
    for name in names:
        row: dict[str, Any] = {"variant": name, "batch": batch}
        try:
            started = time.perf_counter()
            call = variant_call(name, setup, inp)
            call()
            sync(setup["device"])
            row["prepare_seconds"] = time.perf_counter() - started
            per_call, _ = timed(call, setup["device"], args.seconds)
            row["network_items_per_s"] = batch / per_call
            row["network_tflops"] = setup["flops_per_item"] * batch / per_call / 1e12
        except Exception as exc:  # a variant that does not work here is a finding, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            setup["net"].channels_last = True
            torch._dynamo.reset()
        rows.append(row)
    return rows


def measure_model(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    net, tile, schedule = build(name, device, args.quick)
    autocast = autocast_dtype("auto", device)
    setup = {
        "net": net, "tile": tile, "schedule": schedule, "device": device, "autocast": autocast,
        "flops_per_item": flops_per_item(net, tile, device), "peak_tflops": args.peak_tflops,
    }  # fmt: skip
    started = time.perf_counter()
    auto = resolve_batch(None, net, tile, net.config.cond_channels, device, autocast)
    result: dict[str, Any] = {
        "tile": tile,
        "parameters": sum(p.numel() for p in net.parameters()),
        "flops_per_item": setup["flops_per_item"],
        "precision": "bf16" if autocast is not None else "fp32",
        "auto_batch": auto,
        "auto_batch_seconds": time.perf_counter() - started,
    }
    table = QUICK_BATCHES if args.quick else GPU_BATCHES
    batches = sorted(set(table[name]) | {auto})
    result["rows"] = [measure_batch(setup, b, args) for b in batches]
    return result


def variants_of_bundled(
    args: argparse.Namespace, device: torch.device, batch: int, save: Callable[[list], None]
) -> None:
    """The variants at ``batch`` for the bundled model, saved after each (compile is slow)."""
    names = [v for v in args.variants.split(",") if v]
    if device.type != "cuda":
        names = [v for v in names if "cuda" not in v]
    net, tile, schedule = build("bundled", device, args.quick)
    setup = {
        "net": net, "tile": tile, "schedule": schedule, "device": device,
        "autocast": autocast_dtype("auto", device), "flops_per_item": flops_per_item(net, tile, device),
    }  # fmt: skip
    rows: list[dict[str, Any]] = []
    for name in names:
        rows += measure_variants(setup, batch, [name], args)
        save(rows)


def describe_device(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            memory_gib=props.total_memory / 2**30,
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"device: {report['device'].get('name')} ({report['device']['device']}), "
        f"torch {report['device']['torch']}, peak {report['peak_tflops'] or 'n/a'} TFLOP/s",
        "",
        "| network | tile | batch | network TFLOP/s | sampling TFLOP/s | of peak | items/s "
        "(sampling) | noise ms/item/step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, model in report["models"].items():
        if "error" in model:
            lines.append(f"| {name} | | | {model['error'][:200]} |")
            continue
        for row in model["rows"]:
            auto = " (auto)" if row["batch"] == model["auto_batch"] else ""
            if "error" in row:
                lines.append(
                    f"| {name} | {model['tile']} | {row['batch']}{auto} | {row['error']} |"
                )
                continue
            frac = row.get("sampling_fraction_of_peak")
            lines.append(
                f"| {name} | {model['tile']}² | {row['batch']}{auto} | "
                f"{row['network_tflops']:.2f} | {row['sampling_tflops']:.2f} | "
                f"{'' if frac is None else f'{100 * frac:.1f} %'} | "
                f"{row['sampling_items_per_s']:.0f} | {row['noise_ms_per_item_step']:.3f} |"
            )
        for row in model.get("variants", []):
            rate = row.get("network_tflops")
            lines.append(
                f"| {name} {row['variant']} | {model['tile']}² | {row['batch']} | "
                + (f"{rate:.2f} | | | | prepare {row['prepare_seconds']:.1f} s |" if rate else "")
                + (f"{row['error'][:120]} |" if "error" in row else "")
            )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="tiny tiles and batches (CPU test)")
    parser.add_argument("--models", default="bundled,paper")
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps of the sampling loop")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument(
        "--variants",
        default="nchw,cuda_graph,compile,compile_cuda_graphs",
        help="comma-separated variants at the auto batch (bundled model); '' for none",
    )
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    wanted = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if wanted == "auto" else wanted)
    info = describe_device(device)
    if args.peak_tflops is None and "H200" in str(info.get("name")):
        args.peak_tflops = H200_PEAK_TFLOPS
    report: dict[str, Any] = {"device": info, "peak_tflops": args.peak_tflops, "models": {}}
    report["settings"] = {k: str(v) for k, v in vars(args).items()}

    def save() -> None:  # after each measurement, so a timeout keeps what was measured
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1, default=str))

    models = report["models"]
    for name in [m for m in args.models.split(",") if m]:
        try:
            models[name] = measure_model(name, args, device)
        except Exception as exc:  # one network failing must not lose the other's figures
            models[name] = {"error": f"{type(exc).__name__}: {exc}", "rows": []}
        save()
    if args.variants and "auto_batch" in models.get("bundled", {}):
        bundled = models["bundled"]
        variants_of_bundled(
            args,
            device,
            bundled["auto_batch"],
            lambda rows: (bundled.update(variants=rows), save()),
        )
    print(markdown(report))


if __name__ == "__main__":
    main()
