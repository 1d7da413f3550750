"""Fine-tuning: a training run that starts from an existing model's weights (``--init-from``).

The starting model decides what the network is: its architecture, objective, noise schedule,
normalisation percentiles and target frame are taken over (the frame only where the config
leaves it unset: switching a model to target_frame ``low`` is a deliberate re-training), so a
preset such as configs/finetune.yaml only says how to train (learning rate, steps, patches).
Only the weights are taken, never the optimiser state: fine-tuning is a new run on the user's
pairs, and the model file records where it began.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bigrestore.errors import IncompatibleModelError, describe
from bigrestore.model.files import ModelInfo, read_model, read_weights
from bigrestore.train.config import TrainConfig


def adopt_model(config: TrainConfig, path: Path) -> tuple[TrainConfig, ModelInfo]:
    """``config`` with the network of the model at ``path`` (checked, nothing allocated).

    The patch side must suit the model's downsampling; everything else of ``config`` is kept.
    """
    info = read_model(path)
    unet = info.unet
    fields = config.to_dict()
    fields["model"] = {
        "base_channels": unet.base_channels,
        "channel_mult": list(unet.channel_mult),
        "blocks_per_level": unet.blocks_per_level,
        "attn_resolutions": list(unet.attn_resolutions),
        "dropout": config.model.dropout,
        "channels_per_head": unet.channels_per_head,
    }
    fields["objective"] = info.objective.name
    fields["schedule"] = {"T": info.schedule.T, "s": info.schedule.s}
    fields["p_low"] = info.normalization.p_low
    fields["p_high"] = info.normalization.p_high
    if config.target_frame is None:
        fields["target_frame"] = info.normalization.target_frame
    return TrainConfig.from_dict(fields, source=f"{path} (the --init-from model)"), info


def load_initial_weights(
    net: torch.nn.Module, ema: torch.nn.Module | None, info: ModelInfo
) -> None:
    """Copy the starting model's weights into the new network (and its moving average)."""
    state = read_weights(info)
    for module in (net, ema):
        if module is None:
            continue
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise IncompatibleModelError(
                describe(info.directory, "weights", "the architecture of model.json", exc)
            ) from exc


def init_record(info: ModelInfo) -> dict[str, Any]:
    """What the fine-tuned model's provenance says about where it started."""
    return {"model": str(info.directory), "weights_sha256": info.weights_sha256}
