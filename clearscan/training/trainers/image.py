"""The image trainer (PyTorch): the only trainer, with the network modules it builds on
(`clearscan.training.architectures`, `.resnet`, `.export`), that imports torch; the serving
install has none, and `clearscan.training.trainers.trainer_for` refuses image datasets there.

The recipe that trained the bundled model (`scripts/train_bundled_model.py`), made general:
any number of classes, 1 or 3 channels, a small ResNet-style CNN for 28-64 px inputs; AdamW with
a one-cycle schedule, augmentation (affine + brightness/contrast), class-weighted cross-entropy
with label smoothing, BatchNorm statistics re-estimated on clean training images before every
validation pass, early stopping on validation AUC (macro one-vs-rest for several classes), and
for two classes the decision threshold chosen on validation (median of the balanced-accuracy
plateau) and folded into the final bias. Deterministic for a seed. The fitted model is exported
to ONNX and packaged with its model card and out-of-domain reference."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clearscan.datasets.models import Dataset
from clearscan.inference.manifest import InputSpec
from clearscan.training.architectures import build_model
from clearscan.training.inputs import load_split
from clearscan.training.metrics import (
    choose_threshold,
    classification_metrics,
    macro_auc,
)
from clearscan.training.recipes import RECIPES, ImageRecipe
from clearscan.training.trainers.base import Fitted, Trainer, TrainJob, TrainResult

INPUT_NAME, OUTPUT_NAME, TARGET_NAME = "image", "logits", "layer_last_output"

# --- training pieces ------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Fix every RNG we use and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def augment(x: torch.Tensor, gen: torch.Generator, r: ImageRecipe) -> torch.Tensor:
    """Random affine (rotate/scale/shift) and brightness/contrast jitter on [0, 1] images."""
    n = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    ang = u(-r.rotate, r.rotate) * math.pi / 180.0
    scale = u(1.0 - r.scale, 1.0 + r.scale)
    shift = r.shift * 2.0 / x.shape[-1]  # pixels -> normalised coordinates
    tx, ty = u(-shift, shift), u(-shift, shift)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(
        x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if r.hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = u(1.0 - r.contrast, 1.0 + r.contrast)[:, None, None, None]
    bright = u(-r.brightness, r.brightness)[:, None, None, None]
    return ((x - mean) * contrast + mean + bright).clamp(0.0, 1.0)


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, x: Any, batch: int = 512) -> None:
    """Re-estimate BatchNorm statistics on clean (unaugmented) training images.

    During training the running statistics follow augmented batches; served images are not
    augmented, so eval-mode outputs are shifted and badly calibrated (validation accuracy at a
    fixed threshold swung between 0.53 and 0.97 from epoch to epoch without this)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    was_training = model.training
    model.train()
    for i in range(0, len(x), batch):
        model(x[i : i + batch])
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.train(was_training)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: Any, batch: int = 512) -> np.ndarray:
    """Class probabilities N x C (eval mode, float64)."""
    model.eval()
    out = [torch.softmax(model(x[i : i + batch]), 1) for i in range(0, len(x), batch)]
    return torch.cat(out).double().numpy()


def fold_threshold(model: Any, threshold: float) -> Any:
    """Copy of a two-class `model` whose softmax argmax equals `P(class 1) >= threshold`
    (logit(t) / 2 moves from the class-1 bias to the class-0 bias)."""
    folded = copy.deepcopy(model).eval()
    shift = math.log(threshold / (1.0 - threshold))
    with torch.no_grad():
        folded.fc.bias[1] -= shift / 2.0
        folded.fc.bias[0] += shift / 2.0
    return folded


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C -> float32 N x C x H x W in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255.0


IN_MEMORY_FLOATS = 256 * 2**20  # float32 bytes above which images are converted per batch


class ImageBatches:
    """uint8 N x H x W x C images (in memory or memory-mapped) read as float32 N x C x H x W
    batches in [0, 1], so a large split never exists as floats all at once."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        n, h, w, c = images.shape
        self.shape = (n, c, h, w)

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, idx: Any) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        return to_tensor(np.asarray(self.images[idx]))

    def mean_std(self, chunk: int = 1024) -> tuple[float, float]:
        total = total_sq = 0.0
        count = 0
        for i in range(0, len(self), chunk):
            a = np.asarray(self.images[i : i + chunk], dtype=np.float64) / 255.0
            total += float(a.sum())
            total_sq += float((a * a).sum())
            count += a.size
        mean = total / count
        return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))


def as_batches(images: np.ndarray) -> Any:
    """A float tensor when the split is small (the bundled model's path, bit for bit), else an
    ImageBatches reader."""
    if images.size * 4 <= IN_MEMORY_FLOATS:
        return to_tensor(images)
    return ImageBatches(images)


def build_image_model(
    recipe: ImageRecipe, *, n_classes: int, mean: float, std: float, channels: int
) -> Any:
    if recipe.arch == "resnet18":
        from clearscan.training.resnet import NormalizedResNet, resnet18

        net = resnet18(num_classes=n_classes, in_channels=channels, zero_init_residual=True)
        return NormalizedResNet(net, mean, std)
    return build_model(
        num_classes=n_classes, widths=recipe.widths, mean=mean, std=std, in_channels=channels
    )


# --- the loop ---------------------------------------------------------------------------------


Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainedImageModel:
    model: Any  # PneumoniaNet or NormalizedResNet, eval mode; threshold folded for two classes
    threshold: float | None
    val_metrics: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def train_image_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    n_classes: int,
    recipe: ImageRecipe,
    progress: Progress | None = None,
) -> TrainedImageModel:
    """Train on uint8 N x H x W x C images (already at the recipe's size); keep the weights of
    the best validation-AUC epoch. `progress` gets a dict after every epoch and may raise to
    stop (cancellation)."""
    torch.set_num_threads(recipe.threads)
    seed_everything(recipe.seed)
    xtr, xva = as_batches(train_x), as_batches(val_x)
    ytr = torch.from_numpy(train_y.astype(np.int64))
    yva = val_y.astype(np.int64)
    channels = xtr.shape[1]
    if isinstance(xtr, ImageBatches):
        mean, std = xtr.mean_std()
    else:
        mean, std = float(xtr.mean()), float(xtr.std())
    std = std or 1.0

    def fresh() -> Any:
        return build_image_model(recipe, n_classes=n_classes, mean=mean, std=std, channels=channels)

    model = fresh()
    counts = torch.bincount(ytr, minlength=n_classes).double().clamp(min=1)
    class_w = (counts.sum() / (n_classes * counts)).float() if recipe.class_weights else None
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=recipe.lr,
        total_steps=recipe.epochs * steps_per_epoch,
        pct_start=0.15,
        anneal_strategy="cos",
    )
    gen = torch.Generator().manual_seed(recipe.seed)
    best_auc, best_epoch, best_state, since_best = -1.0, 0, None, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for i in range(0, len(xtr), recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            xb = augment(xtr[idx], gen, recipe)
            loss = F.cross_entropy(
                model(xb), ytr[idx], weight=class_w, label_smoothing=recipe.label_smoothing
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        recalibrate_bn(model, xtr, recipe.eval_batch)
        prob = predict_proba(model, xva, recipe.eval_batch)
        auc = macro_auc(yva, prob)
        acc = float((prob.argmax(axis=1) == yva).mean())
        elapsed = time.perf_counter() - started
        row = {
            "epoch": epoch,
            "loss": round(total / len(xtr), 5),
            "val_auc": round(auc, 5),
            "val_acc": round(acc, 5),
        }
        history.append(row)
        improved = auc > best_auc
        if improved:
            best_auc, best_epoch, since_best = auc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        stop = since_best >= recipe.patience
        if progress is not None:
            left = (recipe.epochs - epoch) if not stop else 0
            progress(
                {
                    **row,
                    "epochs": recipe.epochs,
                    "best_epoch": best_epoch,
                    "best_val_auc": round(best_auc, 5),
                    "elapsed_s": round(elapsed, 1),
                    "eta_s": round(elapsed / epoch * left, 1),
                    "history": history,
                }
            )
        if stop:
            break
    assert best_state is not None
    final = fresh()
    final.load_state_dict(best_state)
    final.eval()
    prob = predict_proba(final, xva, recipe.eval_batch)
    threshold = None
    if n_classes == 2:
        threshold, _ = choose_threshold(yva, prob[:, 1])
        pred = (prob[:, 1] >= threshold).astype(np.int64)
        final = fold_threshold(final, threshold)
    else:
        pred = prob.argmax(axis=1)
    metrics = classification_metrics(yva, pred, prob)
    info = {
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "mean": mean,
        "std": std,
        "history": history,
        "train_counts": counts.long().tolist(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    return TrainedImageModel(final, threshold, metrics, info)


# --- the trainer ----------------------------------------------------------------------------------


def default_recipe(ds: Dataset) -> str:
    """cnn-small for small images (MedMNIST's 28 px), cnn-small-64 for anything larger."""
    return "cnn-small" if ds.info.get("height", {}).get("max", 28) <= 32 else "cnn-small-64"


@dataclass
class FittedImage(Fitted):
    trained: TrainedImageModel
    result: TrainResult
    spec: InputSpec
    classes: list[str]
    dataset: dict[str, Any]  # name, hash, counts, license
    xtr: np.ndarray
    xva: np.ndarray

    def write_package(self, pkg: Path, *, name: str, version: str) -> None:
        _write_package(
            pkg,
            trained=self.trained,
            name=name,
            version=version,
            classes=self.classes,
            spec=self.spec,
            recipe=self.result.recipe_params,
            dataset=self.dataset,
            xtr=self.xtr,
            xva=self.xva,
        )


class ImageTrainer(Trainer):
    dataset_kind = "images"

    def train(self, job: TrainJob) -> FittedImage:
        ds, req, ctx = job.dataset, job.request, job.ctx
        recipe = RECIPES[req.recipe or default_recipe(ds)]
        recipe = replace(recipe, seed=req.seed, epochs=req.epochs or recipe.epochs)
        channels = int(ds.info.get("channels", 1))
        spec = InputSpec(
            channels=channels if channels in (1, 3) else 1,
            height=recipe.size,
            width=recipe.size,
            mean=[0.0],
            std=[1.0],
        )
        ctx.report(force=True, stage="loading images", recipe=recipe.name, epochs=recipe.epochs)
        xtr, ytr = load_split(job.db, job.blobs, ds, "train", spec, job.workdir, ctx)
        xva, yva = load_split(job.db, job.blobs, ds, "val", spec, job.workdir, ctx)
        classes = list(ds.classes)

        def progress(row: dict[str, Any]) -> None:
            ctx.report(force=True, stage="training", **row)

        ctx.report(force=True, stage="training", epoch=0)
        trained = train_image_classifier(
            xtr, ytr, xva, yva, n_classes=len(classes), recipe=recipe, progress=progress
        )
        ctx.report(force=True, stage="exporting")
        info = trained.info
        result = TrainResult(
            kind="image",
            recipe=recipe.name,
            recipe_params=recipe.describe(),
            val_metrics=trained.val_metrics,
            threshold=trained.threshold,
            dataset={"name": ds.name, "hash": ds.content_hash},
            history=list(info["history"]),
            epochs_run=info["epochs_run"],
            best_epoch=info["best_epoch"],
            wall_s=info["wall_s"],
        )
        dataset = {
            "name": ds.name,
            "hash": ds.content_hash,
            "counts": dict(ds.counts),
            "license": ds.info.get("license"),
        }
        return FittedImage(trained, result, spec, classes, dataset, xtr, xva)


TRAINER = ImageTrainer()


# --- the package ----------------------------------------------------------------------------------


def _write_package(
    pkg: Path,
    *,
    trained: TrainedImageModel,
    name: str,
    version: str,
    classes: list[str],
    spec: InputSpec,
    recipe: dict[str, Any],
    dataset: dict[str, Any],
    xtr: np.ndarray,
    xva: np.ndarray,
) -> None:
    import onnx

    from clearscan.inference.ood import fit_reference
    from clearscan.training.export import export_onnx

    pkg.mkdir(parents=True)
    weights = pkg / "model.onnx"
    export_onnx(
        trained.model,
        weights,
        channels=spec.channels,
        height=spec.height,
        width=spec.width,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
    )
    m = onnx.load(str(weights))
    m.doc_string = f"ClearScan {name} {version}, trained on dataset {dataset['name']}"
    onnx.save(m, str(weights))
    # out-of-domain reference from the training inputs (pooled target activation + pixels)
    model = trained.model.eval()

    def pooled(x: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 512):
                t = torch.from_numpy(x[i : i + 512].transpose(0, 3, 1, 2).astype(np.float32) / 255)
                out.append(model.features(t).mean(dim=(2, 3)).double().numpy())
        return np.concatenate(out)

    def inputs(x: np.ndarray, limit: int = 4000) -> np.ndarray:
        idx = np.linspace(0, len(x) - 1, min(len(x), limit)).astype(int)
        return x[idx].transpose(0, 3, 1, 2).astype(np.float32) / 255

    ref = fit_reference(pooled(xtr), pooled(xva), inputs(xtr), inputs(xva))
    (pkg / "ood_reference.json").write_text(json.dumps(ref.to_json()))
    metrics = {"validation": trained.val_metrics}
    card = _model_card(name, version, classes, spec, recipe, dataset, trained)
    (pkg / "MODEL_CARD.md").write_text(card)
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "task": "classification",
        "runtime": "onnx",
        "weights": "model.onnx",
        "labels": classes,
        "description": f"Trained in ClearScan on dataset {dataset['name']} ({recipe['name']}).",
        "input": {
            "name": INPUT_NAME,
            "channels": spec.channels,
            "height": spec.height,
            "width": spec.width,
            "crop": spec.crop,
            "interpolation": spec.interpolation,
            "mean": [0.0],
            "std": [1.0],
        },
        "output": {"name": OUTPUT_NAME, "kind": "logits"},
        "explain": {"method": "gradcam"},
        "ood": {"file": "ood_reference.json"},
        "metrics": metrics,
        "training": {
            "dataset": dataset["name"],
            "dataset_hash": dataset["hash"],
            "recipe": recipe,
            "epochs_run": trained.info["epochs_run"],
            "best_epoch": trained.info["best_epoch"],
            "history": trained.info["history"],
        },
        "intended_use": "Research and validation inside ClearScan. Not for clinical use "
        "until validated and activated by a responsible person.",
        "limitations": "Validated only on the validation split of its dataset; expect degraded "
        "output on other sites, scanners and populations.",
        "model_card": "MODEL_CARD.md",
    }
    if dataset.get("license"):
        manifest["license"] = f"Trained on data licensed as: {dataset['license']}"
    if trained.threshold is not None:
        manifest["threshold"] = {
            "label": classes[1],
            "value": round(trained.threshold, 6),
            "folded_into_bias": True,
        }
    manifest["files"] = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(pkg.iterdir())
        if f.name != "manifest.json"
    }
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _model_card(
    name: str,
    version: str,
    classes: list[str],
    spec: InputSpec,
    recipe: dict[str, Any],
    dataset: dict[str, Any],
    trained: TrainedImageModel,
) -> str:
    v = trained.val_metrics
    lines = [
        f"# {name} {version}",
        "",
        "## Intended use",
        "Trained in ClearScan. Research and validation only until a responsible person has "
        "evaluated it on held-out data and activated it. Not for clinical use.",
        "",
        "## Data",
        f"Dataset `{dataset['name']}`, content hash `{dataset['hash']}`; classes "
        f"{', '.join(classes)}; items per split and class: `{json.dumps(dataset['counts'])}`. "
        "Trained on the train split; epoch and threshold chosen on the validation split only."
        + (
            f" Data licence and attribution: {dataset['license']}" if dataset.get("license") else ""
        ),
        "",
        "## Recipe",
        f"`{recipe['name']}`: ResNet-style CNN (widths {recipe['widths']}), input "
        f"{spec.channels} x {spec.height} x {spec.width} in [0, 1] (centre square crop, "
        f"{spec.interpolation} resize), AdamW lr {recipe['lr']}, weight decay "
        f"{recipe['weight_decay']}, batch {recipe['batch_size']}, up to {recipe['epochs']} epochs "
        f"(early stopping on validation AUC, patience {recipe['patience']}), seed "
        f"{recipe['seed']}. Ran {trained.info['epochs_run']} epochs in {trained.info['wall_s']} s; "
        f"best epoch {trained.info['best_epoch']}.",
        "",
        "## Validation metrics",
        f"n = {v['n']}: accuracy {v['accuracy']}, AUC {v['auc']}, balanced accuracy "
        f"{v['balanced_accuracy']}"
        + (
            f", sensitivity {v['sensitivity']}, specificity {v['specificity']} at threshold "
            f"{trained.threshold:.4f} on P({classes[1]}) (folded into the model's bias)."
            if trained.threshold is not None
            else "."
        ),
        "",
        "## Out-of-domain guard",
        "The package carries reference statistics of its training inputs "
        "(`ood_reference.json`); predictions far outside them are flagged.",
    ]
    return "\n".join(lines) + "\n"
