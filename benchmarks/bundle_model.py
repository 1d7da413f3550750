"""Copy a trained model into the package as the bundled model (bigrestore/data/model).

    python benchmarks/bundle_model.py WORK/model_diffusion

The weights are re-saved unchanged (same bytes, same SHA-256); only the provenance's data
paths are reduced to file names, so model.json does not carry the training machine's
directories. The model card (bigrestore/data/model/MODEL_CARD.md) is written by hand from
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bigrestore.model.files import CORE_KEYS, load_model, save_model, sha256_file

BUNDLE = Path(__file__).resolve().parents[1] / "bigrestore" / "data" / "model"


def strip_paths(value: Any) -> Any:
    """Absolute paths (strings starting with '/') become their last component, recursively."""
    if isinstance(value, dict):
        return {k: strip_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return Path(value).name
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--to", type=Path, default=BUNDLE)
    args = parser.parse_args()
    net, info = load_model(args.model)
    meta = info.meta
    spec = {k: v for k, v in meta.items() if k not in CORE_KEYS}
    spec["provenance"] = strip_paths(spec.get("provenance", {}))
    digest = save_model(args.to, net, spec)
    source = sha256_file(args.model / "model.safetensors")
    if sha256_file(args.to / "model.safetensors") != source:
        raise SystemExit("re-saved weights differ from the trained model's")
    print(f"bundled {args.model} -> {args.to} (model hash {digest}, weights sha256 {source})")


if __name__ == "__main__":
    main()
