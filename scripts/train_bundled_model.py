"""Train, export and package ClearScan's bundled pneumonia classifier (PneumoniaMNIST, 28 px).

Reproduce (what ``make model`` runs, from the repository root)::

    .venv/bin/python scripts/train_bundled_model.py \
        --data ../shared/datasets/pneumoniamnist/pneumoniamnist_trainval.npz

Trains on the train split only; the epoch (best validation AUC) and the decision threshold
(maximum validation balanced accuracy) are chosen on the validation split only. The threshold
is folded into the final Linear bias, so ``argmax(logits)`` of the exported ONNX model is the
thresholded decision. Writes ``model.onnx``, ``MODEL_CARD.md`` and ``manifest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from clearscan.training.architectures import PneumoniaNet  # noqa: E402
from clearscan.training.export import export_onnx as export  # noqa: E402
from clearscan.training.metrics import choose_threshold, roc_auc  # noqa: E402
from clearscan.training.recipes import ImageRecipe  # noqa: E402
from clearscan.training.trainers.image import (  # noqa: E402
    fold_threshold,
    predict_proba,
    train_image_classifier,
)

LABELS = ["normal", "pneumonia"]
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
TARGET_NAME = "layer_last_output"
OPSET = 17
DEFAULT_DATA = "../shared/datasets/pneumoniamnist/pneumoniamnist_trainval.npz"
DEFAULT_OUT = "clearscan/bundled_models/pneumonia-cxr"
MAX_ONNX_BYTES = 10 * 1024 * 1024
MAKE_COMMAND = f".venv/bin/python scripts/train_bundled_model.py --data {DEFAULT_DATA}"


# ----------------------------------------------------------------------------- metrics


def binary_metrics(y_true: np.ndarray, pred: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """Accuracy, AUC, balanced accuracy, sensitivity, specificity, n."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(pred).astype(int).ravel()
    sens = float(((p == 1) & (y == 1)).sum() / (y == 1).sum())
    spec = float(((p == 0) & (y == 0)).sum() / (y == 0).sum())
    return {
        "accuracy": float((p == y).mean()),
        "auc": roc_auc(y, score),
        "balanced_accuracy": (sens + spec) / 2.0,
        "sensitivity": sens,
        "specificity": spec,
        "n": len(y),
    }


# ----------------------------------------------------------------------------- training


# ----------------------------------------------------------------------------- export


def export_onnx(model: PneumoniaNet, path: Path) -> str:
    """Export to ONNX (opset 17, dynamic batch); rename the GAP input; return its name."""
    export(
        model,
        path,
        channels=1,
        height=28,
        width=28,
        opset=OPSET,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
    )
    m = onnx.load(str(path))
    pools = [n for n in m.graph.node if n.op_type == "GlobalAveragePool"]
    if len(pools) != 1:
        raise RuntimeError(f"expected one GlobalAveragePool, found {len(pools)}")
    old = pools[0].input[0]
    for node in m.graph.node:
        node.input[:] = [TARGET_NAME if n == old else n for n in node.input]
        node.output[:] = [TARGET_NAME if n == old else n for n in node.output]
    for vi in m.graph.value_info:
        if vi.name == old:
            vi.name = TARGET_NAME
    m.doc_string = "ClearScan pneumonia-cxr 1.0.0; threshold folded into the Gemm bias."
    m = onnx.shape_inference.infer_shapes(m)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    verify_graph(m)
    return TARGET_NAME


def verify_graph(m: onnx.ModelProto) -> None:
    """Check the input/output contract and that the head is GAP -> (Flatten) -> Gemm."""
    g = m.graph
    assert [i.name for i in g.input] == [INPUT_NAME], [i.name for i in g.input]
    assert [o.name for o in g.output] == [OUTPUT_NAME], [o.name for o in g.output]
    dims = g.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pool = next(n for n in g.node if n.op_type == "GlobalAveragePool")
    nxt = consumers[pool.output[0]]
    if nxt[0].op_type == "Flatten":
        nxt = consumers[nxt[0].output[0]]
    assert len(nxt) == 1 and nxt[0].op_type == "Gemm", [n.op_type for n in nxt]
    assert nxt[0].output[0] == OUTPUT_NAME
    inits = {i.name for i in g.initializer}
    assert nxt[0].input[1] in inits and nxt[0].input[2] in inits


def onnx_logits(path: Path, x: np.ndarray, extra: tuple[str, ...] = ()) -> list[np.ndarray]:
    """Run the exported model with onnxruntime (CPU), exposing ``extra`` tensors as outputs."""
    m = onnx.load(str(path))
    if extra:
        m = onnx.shape_inference.infer_shapes(m)
        known = {vi.name: vi for vi in m.graph.value_info}
        m.graph.output.extend(known[name] for name in extra)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME, *extra], {INPUT_NAME: x})


def softmax1(logits: np.ndarray) -> np.ndarray:
    """Softmax probability of class 1 for [N, 2] logits (float64)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, 1] / e.sum(axis=1)


# ----------------------------------------------------------------------------- packaging


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


ATTRIBUTION = (
    "MedMNIST v2: J. Yang, R. Shi, D. Wei, et al., 'MedMNIST v2 - A large-scale lightweight "
    "benchmark for 2D and 3D biomedical image classification', Scientific Data 10, 41 (2023); "
    "source images: D. S. Kermany et al., 'Identifying Medical Diagnoses and Treatable Diseases "
    "by Image-Based Deep Learning', Cell 172(5), 1122-1131 (2018); licence CC BY 4.0."
)
LIMITATIONS = (
    "Trained on 28x28 downsampled pediatric (age 1-5) chest radiographs from a single centre "
    "(Guangzhou Women and Children's Medical Center); not validated on adults, other sites, "
    "scanners or higher resolutions; does not distinguish bacterial from viral pneumonia or "
    "detect other findings; expect degraded and miscalibrated output under domain shift."
)


def model_card(ctx: dict[str, Any]) -> str:
    """Render MODEL_CARD.md."""
    v = ctx["metrics"]
    w1, w2, w3 = ctx["widths"]
    t = ctx["threshold"]
    a = ctx["args"]
    cw = "on" if a.class_weights else "off"
    hflip = ", horizontal flip" if a.hflip else ""
    wall = ctx["wall_seconds"]
    make_note = (
        "`make model` runs exactly this"
        if ctx["command"] == MAKE_COMMAND
        else f"`make model` runs `{MAKE_COMMAND}` (default options)"
    )
    return f"""# pneumonia-cxr 1.0.0 - bundled chest X-ray pneumonia classifier

## Intended use
Demonstration and software testing of ClearScan only. **Not for clinical use**: it must not be
used to diagnose, triage or treat patients. Output labels: `normal`, `pneumonia`.

## Architecture
Small ResNet-style CNN (`clearscan/training/architectures.py`, `PneumoniaNet`,
widths {w1}/{w2}/{w3}, {ctx["n_params"]:,} parameters, ONNX file {ctx["onnx_bytes"]:,} bytes):
in-graph normalisation `(x - {ctx["mean"]:.6f}) / {ctx["std"]:.6f}` (train-split pixel mean/std)
-> 3x3 conv stem ({w1} ch, 28x28) -> residual block ({w1} ch, 28x28) -> residual block
({w2} ch, stride 2, 14x14) -> residual block `layer_last` ({w3} ch, 14x14)
-> GlobalAveragePool -> Flatten -> one Linear (Gemm, {w3} -> 2).

ONNX: opset {OPSET}, input `{INPUT_NAME}` float32 [N, 1, 28, 28] with pixel values in [0, 1]
(dynamic batch), output `{OUTPUT_NAME}` float32 [N, 2] (class order `normal`, `pneumonia`).
Grad-CAM target: tensor `{ctx["target"]}` (output of `layer_last`, [N, {w3}, 14, 14], the input of
the GlobalAveragePool node). Because the head is GAP + a single linear layer, Grad-CAM for class k
equals `ReLU(sum_c W[k, c] * A_c)` up to a positive factor, with `W` the Gemm weight.

## Preprocessing (MedMNIST style)
Convert to grayscale, centre-crop to a square (short side), resize to 28x28 with bicubic
interpolation, scale pixel values to [0, 1] (divide 8-bit values by 255). No mean/std
normalisation outside the model: it happens inside the graph.

## Training data
PneumoniaMNIST (MedMNIST v2) train split only: {ctx["n_train"]} images
({ctx["train_counts"][0]} normal / {ctx["train_counts"][1]} pneumonia); validation split
({v["n"]} images) used only for choosing the epoch and the threshold. The official test split was
not used. Dataset file `pneumoniamnist_trainval.npz`, sha256 `{ctx["dataset_sha256"]}`.

Attribution: {ATTRIBUTION}

Training recipe:
- AdamW (lr {a.lr}, weight decay {a.weight_decay}), one-cycle cosine schedule, batch
  {a.batch_size}; {ctx["epochs_run"]} epochs run, weights of the best validation-AUC epoch kept
  (epoch {ctx["best_epoch"]}, early-stopping patience {a.patience}).
- Class-weighted cross-entropy (weights inverse to class frequency: {cw}), label smoothing
  {a.label_smoothing}.
- Augmentation: random rotation +/-{a.rotate} deg, scale +/-{a.scale}, shift +/-{a.shift} px,
  brightness +/-{a.brightness}, contrast +/-{a.contrast}{hflip}.
- Before every validation pass (and so for the shipped weights) the BatchNorm statistics are
  re-estimated on the clean, unaugmented training images, so eval-mode outputs match what the
  network sees when serving.
- Seed {a.seed}; deterministic torch kernels; 2 CPU threads; wall time {wall:.0f} s for the
  whole script (training, threshold choice, export, checks).

## Decision threshold (folded into the bias)
The threshold on the original P(pneumonia) was chosen on the validation split for balanced
accuracy (Youden's J): every candidate within 0.005 of the best balanced accuracy counts as
optimal and the median of that plateau is taken, rather than a narrow peak decided by one or two
images: **t = {t:.6f}**. It is folded into the final Linear/Gemm bias:
`logit(t) / 2` was subtracted from the pneumonia bias and added to the normal bias, so the logit
difference shifts by `-logit(t)` and `argmax(logits)` (equivalently softmax >= 0.5) is exactly the
decision `P_original(pneumonia) >= t`. Softmax of the shipped logits is therefore a re-centred
score (0.5 at the operating point), not a calibrated probability; ranking (AUC) is unchanged.

## Validation metrics (shipped ONNX model, validation split, n = {v["n"]})
| metric | value |
| --- | --- |
| accuracy (argmax) | {v["accuracy"]:.4f} |
| AUC | {v["auc"]:.4f} |
| balanced accuracy | {v["balanced_accuracy"]:.4f} |
| sensitivity (pneumonia) | {v["sensitivity"]:.4f} |
| specificity (normal) | {v["specificity"]:.4f} |

Validation metrics are optimistic: the threshold and epoch were chosen on this split. The
official test split has a different class balance (about 37.5% normal) and is scored
independently. Reference (MedMNIST v2, test): ResNet-18 at 28 px ACC 0.854 / AUC 0.944.

## Limitations
{LIMITATIONS}

## Reproduce
From the repository root ({make_note}):

```
{ctx["command"]}
```

Bit-identical weights are expected only on the same CPU type and torch version (2.13.0 CPU).
"""


def write_package(out: Path, tmp: Path) -> None:
    """Replace ``out`` with the fully written ``tmp`` directory."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="trainval .npz")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="package directory")
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--widths", default="24,48,96", help="channels of the three stages")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument("--no-class-weights", dest="class_weights", action="store_false")
    p.add_argument("--patience", type=int, default=12, help="early-stopping patience (epochs)")
    p.add_argument("--rotate", type=float, default=10.0)
    p.add_argument("--scale", type=float, default=0.1)
    p.add_argument("--shift", type=float, default=2.0)
    p.add_argument("--brightness", type=float, default=0.1)
    p.add_argument("--contrast", type=float, default=0.2)
    p.add_argument("--hflip", action="store_true")
    args = p.parse_args(argv)
    raw_argv = sys.argv[1:] if argv is None else argv

    data_path = args.data.resolve()
    with np.load(data_path) as npz:
        data = {k: npz[k] for k in npz.files}
    dataset_sha = sha256_file(data_path)

    # the training studio's image trainer (clearscan/training/image.py), with these options
    recipe = ImageRecipe(
        size=28,
        widths=tuple(int(w) for w in args.widths.split(",")),  # type: ignore[arg-type]
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        class_weights=args.class_weights,
        patience=args.patience,
        rotate=args.rotate,
        scale=args.scale,
        shift=args.shift,
        brightness=args.brightness,
        contrast=args.contrast,
        hflip=args.hflip,
        seed=args.seed,
    )

    def log_epoch(p: dict[str, Any]) -> None:
        print(
            f"epoch {p['epoch']:3d} loss {p['loss']:.4f} val_auc {p['val_auc']:.4f} "
            f"val_acc {p['val_acc']:.4f} (best {p['best_val_auc']:.4f} at {p['best_epoch']})",
            flush=True,
        )

    trained = train_image_classifier(
        data["train_images"][..., None],
        data["train_labels"].ravel(),
        data["val_images"][..., None],
        data["val_labels"].ravel(),
        n_classes=2,
        recipe=recipe,
        progress=log_epoch,
    )
    folded = trained.model
    assert trained.threshold is not None
    threshold = trained.threshold
    model = fold_threshold(folded, 1.0 - threshold)  # the same weights without the threshold
    info = {**trained.info, "widths": list(recipe.widths)}
    xva = data["val_images"].astype(np.float32)[:, None] / 255.0
    yva = data["val_labels"].astype(np.int64).ravel()
    prob_orig = predict_proba(model, torch.from_numpy(xva))[:, 1]
    _, bacc = choose_threshold(yva, prob_orig)
    print(
        f"best epoch {info['best_epoch']} val AUC {roc_auc(yva, prob_orig):.4f}; "
        f"threshold {threshold:.6f} (val balanced acc {bacc:.4f})",
        flush=True,
    )

    out: Path = args.out if args.out.is_absolute() else (Path.cwd() / args.out)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        onnx_path = tmp / "model.onnx"
        target = export_onnx(folded, onnx_path)
        onnx_bytes = onnx_path.stat().st_size
        assert onnx_bytes <= MAX_ONNX_BYTES, onnx_bytes
        logits_ort, feat = onnx_logits(onnx_path, xva, (target,))
        with torch.no_grad():
            logits_pt = folded(torch.from_numpy(xva)).numpy()
            feat_pt = folded.features(torch.from_numpy(xva)).numpy()
        diff = float(np.abs(logits_ort - logits_pt).max())
        fdiff = float(np.abs(feat - feat_pt).max())
        print(f"onnxruntime vs torch: max |logits diff| {diff:.2e}, target diff {fdiff:.2e}")
        assert diff < 1e-4 and fdiff < 1e-4
        pred = logits_ort.argmax(1)
        decided = prob_orig >= threshold
        n_mismatch = int((pred != decided).sum())
        print(f"argmax vs thresholded original probability: {n_mismatch} mismatches")
        assert n_mismatch == 0
        metrics = binary_metrics(yva, pred, softmax1(logits_ort))

        command = shlex.join([".venv/bin/python", "scripts/train_bundled_model.py", *raw_argv])
        n_params = sum(p.numel() for p in model.parameters())
        counts = np.bincount(data["train_labels"].ravel(), minlength=2).tolist()
        wall = time.perf_counter() - t_start
        ctx = {
            **info,
            "args": args,
            "metrics": metrics,
            "threshold": threshold,
            "target": target,
            "onnx_bytes": onnx_bytes,
            "n_params": n_params,
            "n_train": len(data["train_labels"]),
            "train_counts": counts,
            "dataset_sha256": dataset_sha,
            "command": command,
            "wall_seconds": wall,
        }
        (tmp / "MODEL_CARD.md").write_text(model_card(ctx), encoding="utf-8")
        manifest = {
            "schema_version": 1,
            "name": "pneumonia-cxr",
            "version": "1.0.0",
            "task": "classification",
            "runtime": "onnx",
            "weights": "model.onnx",
            "labels": LABELS,
            "modality": "XR",
            "dicom_modalities": ["CR", "DX", "DR", "RG", "OT"],
            "body_part": "chest",
            "description": (
                "Small ResNet-style CNN classifying 28x28 pediatric chest X-rays as normal or "
                "pneumonia (PneumoniaMNIST); demonstration only."
            ),
            "input": {
                "name": INPUT_NAME,
                "channels": 1,
                "height": 28,
                "width": 28,
                "crop": "center_square",
                "interpolation": "bicubic",
                "mean": [0.0],
                "std": [1.0],
                "value_range": [0.0, 1.0],
            },
            "output": {"name": OUTPUT_NAME, "kind": "logits"},
            "explain": {"method": "gradcam", "target": target},
            "threshold": {"label": "pneumonia", "value": threshold, "folded_into_bias": True},
            "metrics": {"validation": metrics},
            "training": {
                "dataset": "PneumoniaMNIST (MedMNIST v2) train split",
                "dataset_sha256": dataset_sha,
                "seed": args.seed,
                "epochs_run": info["epochs_run"],
                "best_epoch": info["best_epoch"],
                "command": command,
                "wall_seconds": round(wall, 1),
            },
            "intended_use": "Demonstration and software testing only. Not for clinical use.",
            "limitations": LIMITATIONS,
            "license": "Model weights trained on CC BY 4.0 data; attribution: " + ATTRIBUTION,
            "model_card": "MODEL_CARD.md",
            "files": {
                "model.onnx": sha256_file(onnx_path),
                "MODEL_CARD.md": sha256_file(tmp / "MODEL_CARD.md"),
            },
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
        write_package(out, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        "validation (shipped ONNX): "
        + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
        )
    )
    print(f"wrote {out} in {time.perf_counter() - t_start:.1f} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
