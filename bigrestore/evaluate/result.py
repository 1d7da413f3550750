"""The result of ``bigrestore evaluate``: per-patch rows, per-method summaries, the best method
per metric, and their JSON / CSV tables (NaN written as null, never as a bare NaN)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HIGHER_BETTER = ("psnr", "pearson", "ssim", "ms_ssim")
LOWER_BETTER = ("mae", "nrmse")
NEAR_ONE = ("resolution_ratio",)
LPIPS_STATUS = (
    "not computed: LPIPS needs torchvision's AlexNet and the LPIPS weights "
    "(neither is a bigrestore dependency)"
)


def badness(metric: str, value: float) -> float:
    """Lower is better: -value for PSNR-like metrics, |log value| for the resolution ratio."""
    if metric in HIGHER_BETTER:
        return -value
    if metric in NEAR_ONE:
        return abs(math.log(value)) if value > 0 else math.inf
    return value


def _jsonable(value: Any) -> Any:
    """NaN -> null, ±inf -> "inf"/"-inf", numpy scalars and paths -> plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return str(value) if isinstance(value, Path) else value


@dataclass
class EvaluationResult:
    """Per-patch rows, per-method summaries (median/mean/n per metric) and the settings used."""

    methods: tuple[str, ...]
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, float]]]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    samples_curve: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    report: Path | None = None

    def best(self) -> dict[str, str]:
        """Method with the best median per metric (closest to 1 for the resolution ratio);
        the per-image best Gaussian chose its sigma with the answer, so it is never "best"."""
        best = {}
        for metric in HIGHER_BETTER + LOWER_BETTER + NEAR_ONE:
            values = {
                m: float(self.summary[m][metric]["median"])
                for m in self.methods
                if m != "gaussian-oracle"
                and metric in self.summary[m]
                and not math.isnan(self.summary[m][metric]["median"])
            }
            if len(values) >= 2:
                best[metric] = min(values, key=lambda m: badness(metric, values[m]))
        return best

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "settings": self.settings,
                "methods": list(self.methods),
                "summary": self.summary,
                "best": self.best(),
                "lpips": LPIPS_STATUS,
                "notes": self.notes,
                "samples_curve": self.samples_curve,
                "training": self.training,
            }
        )

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def write_csv(self, path: str | Path) -> None:
        """One row per (method, plane, patch)."""
        columns = ["method", "plane", "label"]
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
