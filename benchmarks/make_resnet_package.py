"""Build a random-weight ResNet-50 model package for benchmarks (`bench_serving.py`).

The package is a folder holding `model.onnx` (ResNet-50 as in torchvision, 2 classes, 224 x 224
RGB input already normalised with ImageNet mean/std, opset 17, dynamic batch, exported with the
legacy exporter `dynamo=False`) and `manifest.json` (name `resnet50-bench`, version `1.0.0`,
centre-square crop, Grad-CAM explanation, sha256 of every file). It imports with
`clearscan models import FOLDER --data-dir DIR`. The weights are random (seeded): the figures it
gives are about speed, never about accuracy.

    .venv/bin/python benchmarks/make_resnet_package.py OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from clearscan.training.resnet import ResNet

NAME = "resnet50-bench"
VERSION = "1.0.0"
SIZE = 224
LABELS = ["negative", "positive"]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 17


def build_model(seed: int = 0) -> ResNet:
    """The random-weight ResNet-50 (eval mode) the package is exported from; deterministic."""
    import torch

    from clearscan.training.resnet import resnet50

    torch.manual_seed(seed)
    return resnet50(num_classes=len(LABELS), in_channels=3).eval()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_package(dest: Path, *, seed: int = 0, model: ResNet | None = None) -> Path:
    """Export `model` (default: `build_model(seed)`) into the folder `dest` (created; must be
    empty or absent) with its manifest. Returns `dest`."""
    from clearscan.training.resnet import export_onnx

    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} is not empty; give a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    model = build_model(seed) if model is None else model
    onnx_path = export_onnx(
        model,
        dest / "model.onnx",
        height=SIZE,
        width=SIZE,
        opset=OPSET,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
    )
    manifest = {
        "schema_version": 1,
        "name": NAME,
        "version": VERSION,
        "task": "classification",
        "runtime": "onnx",
        "weights": onnx_path.name,
        "labels": LABELS,
        "description": (
            "Random-weight ResNet-50 (torchvision layout, 25.6 M parameters) for serving "
            f"benchmarks; seed {seed}. Predictions are meaningless."
        ),
        "input": {
            "name": INPUT_NAME,
            "channels": 3,
            "height": SIZE,
            "width": SIZE,
            "crop": "center_square",
            "interpolation": "bilinear",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "value_range": [0.0, 1.0],
        },
        "output": {"name": OUTPUT_NAME, "kind": "logits"},
        "explain": {"method": "gradcam"},
        "intended_use": "Benchmarking only. Not for clinical use.",
        "training": {"seed": seed, "weights": "random (torchvision initialisation)"},
        "files": {onnx_path.name: _sha256(onnx_path)},
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dest", type=Path, help="new (or empty) folder to write the package into")
    ap.add_argument("--seed", type=int, default=0, help="torch seed for the random weights")
    args = ap.parse_args()
    out = build_package(args.dest, seed=args.seed)
    size_mb = (out / "model.onnx").stat().st_size / 2**20
    print(f"wrote {NAME}:{VERSION} to {out} (model.onnx {size_mb:.1f} MB)")


if __name__ == "__main__":
    main()
