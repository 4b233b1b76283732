"""Fit the out-of-domain reference of a model package from its training data.

Runs the package's ONNX model over the train split (reference statistics of the pooled target
activation) and the validation split (threshold = a high quantile of its scores), writes
`ood_reference.json` into the package, lists it in the manifest with its sha256 and adds a
section to the model card. `make model` runs it after training the bundled model."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clearscan.inference.manifest import load_manifest  # noqa: E402
from clearscan.inference.ood import fit_reference  # noqa: E402
from clearscan.inference.runtimes.onnx import OnnxModel  # noqa: E402

OOD_FILE = "ood_reference.json"
CARD_MARK = "## Out-of-domain guard"


def model_inputs(images: np.ndarray) -> np.ndarray:
    """28 x 28 uint8 MedMNIST images are already the model's input size: scale to [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None]


def pooled_features(model: OnnxModel, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
    assert model.cam_head is not None, "the model has no GAP + linear head"
    session = model._session
    assert session is not None
    feats = []
    for i in range(0, len(inputs), batch):
        act = session.run(
            [model.cam_head.target], {model.manifest.input.name: inputs[i : i + batch]}
        )[0]
        feats.append(act.mean(axis=(2, 3), dtype=np.float64))
    return np.concatenate(feats)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="trainval .npz (MedMNIST layout)")
    ap.add_argument("--package", type=Path, default=ROOT / "clearscan/bundled_models/pneumonia-cxr")
    ap.add_argument("--quantile", type=float, default=0.995)
    args = ap.parse_args()

    manifest_path = args.package / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    raw.pop("ood", None)
    raw["files"].pop(OOD_FILE, None)
    manifest_path.write_text(json.dumps(raw, indent=2) + "\n")
    model = OnnxModel(args.package, load_manifest(args.package))
    model.load()
    data = np.load(args.data)
    tr, va = model_inputs(data["train_images"]), model_inputs(data["val_images"])
    ref = fit_reference(
        pooled_features(model, tr), pooled_features(model, va), tr, va, quantile=args.quantile
    )
    (args.package / OOD_FILE).write_text(json.dumps(ref.to_json()))
    card_path = args.package / raw.get("model_card", "MODEL_CARD.md")
    card = card_path.read_text().split(CARD_MARK)[0].rstrip() + "\n\n"
    card += (
        f"{CARD_MARK}\n"
        "Each prediction carries an out-of-domain score, the larger of two distances from the "
        f"{ref.n_train} training images, each divided by its {ref.quantile:.1%} quantile on the "
        "validation split: the Mahalanobis distance of the global-average-pooled `layer_last` "
        f"features (threshold {ref.feature_threshold:.3f}) and the residual of the 28 x 28 input "
        f"outside the top {len(ref.components)} principal components of the training inputs "
        f"(threshold {ref.pixel_threshold:.3f}). A score above 1 is flagged `out_of_domain` and "
        "shown with a warning: photographs, CT or MR slices and other non-chest-X-ray inputs lie "
        "outside what this model has seen. Not reliably flagged: pure noise, which the 28 x 28 "
        "resize averages to flat grey.\n"
        f"Reproduce: `.venv/bin/python scripts/fit_ood_reference.py --data {args.data}`\n"
    )
    card_path.write_text(card)
    raw["ood"] = {"file": OOD_FILE}
    raw["files"][OOD_FILE] = sha256(args.package / OOD_FILE)
    raw["files"][card_path.name] = sha256(card_path)
    manifest_path.write_text(json.dumps(raw, indent=2) + "\n")
    print(
        json.dumps(
            {
                "feature_threshold": ref.feature_threshold,
                "pixel_threshold": ref.pixel_threshold,
                "quantile": ref.quantile,
                "n_train": ref.n_train,
            }
        )
    )


if __name__ == "__main__":
    main()
