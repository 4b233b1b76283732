"""Training runs: the `train` job. Dataset -> model inputs (the serving preprocessing, so the
model sees at training what it will see in production) -> trainer -> ONNX export -> package with
model card, metrics, dataset hash, recipe and out-of-domain reference -> imported into the model
store as a new, inactive version in one atomic step (a run that fails or is cancelled registers
nothing)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clearscan.datasets import service as datasets
from clearscan.datasets.importers import DatasetError
from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.imaging import Limits, decode
from clearscan.inference.preprocess import preprocess
from clearscan.jobs.service import JobCancelled, JobContext, JobError
from clearscan.registry.manifest import InputSpec, ModelManifest
from clearscan.registry.service import version_key
from clearscan.registry.store import ModelStore
from clearscan.storage.base import BlobStore

TRAIN_KIND = "train"
INPUT_NAME, OUTPUT_NAME, TARGET_NAME = "image", "logits", "layer_last_output"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_MEMORY_BYTES = 512 * 2**20  # larger input arrays live in a memory-mapped file


class TrainingError(JobError):
    status_code = 422


@dataclass(frozen=True)
class TrainRequest:
    dataset: str  # name or id
    recipe: str | None = None
    epochs: int | None = None
    seed: int = 0
    model_name: str | None = None
    window: int | None = None  # sensor streams: samples per window
    step: int | None = None  # sensor streams: samples between window starts

    def to_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def torch_available() -> bool:
    """Whether PyTorch can be imported, without importing it (~250 MB the server never needs
    unless it trains an image model)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a blocked or half-removed install
        return False


def check_request(db: Session, req: TrainRequest) -> Dataset:
    """Refuse a request that cannot run, before it is queued (422 naming the problem)."""
    from clearscan.training.recipes import RECIPES

    try:
        ds = datasets.get(db, req.dataset)
    except DatasetError as exc:
        raise TrainingError(exc.detail) from None
    from clearscan.training.tabular import TABULAR_RECIPES

    names = list(RECIPES) if ds.kind == "images" else list(TABULAR_RECIPES)
    if req.recipe is not None and req.recipe not in names:
        raise TrainingError(
            f"recipe {req.recipe!r} unknown for {ds.kind} datasets; choose one of "
            f"{', '.join(names)}"
        )
    if ds.kind == "images" and (req.window or req.step):
        raise TrainingError("window and step apply to sensor-stream tables only")
    if ds.kind == "images" and not torch_available():
        raise TrainingError(
            "training on image datasets needs PyTorch, which this installation lacks: install "
            "the train extra (pip install 'clearscan[train]'); table datasets train without it"
        )
    if req.window is not None and not 4 <= req.window <= 100_000:
        raise TrainingError("window must be between 4 and 100000 samples")
    if req.step is not None and not 1 <= req.step <= 100_000:
        raise TrainingError("step must be between 1 and 100000 samples")
    if req.epochs is not None and not 1 <= req.epochs <= 500:
        raise TrainingError("epochs must be between 1 and 500")
    if "val" not in ds.counts or "train" not in ds.counts:
        raise TrainingError(f"dataset {ds.name!r} has no train and val splits")
    if req.model_name is not None and not NAME.fullmatch(req.model_name):
        raise TrainingError("model_name: lower-case letters, digits, '.', '_' and '-'")
    return ds


def default_recipe(ds: Dataset) -> str:
    """cnn-small for small images (MedMNIST's 28 px), cnn-small-64 for anything larger."""
    return "cnn-small" if ds.info.get("height", {}).get("max", 28) <= 32 else "cnn-small-64"


def load_split(
    db: Session,
    blobs: BlobStore,
    ds: Dataset,
    split: str,
    spec: InputSpec,
    workdir: Path,
    ctx: JobContext | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x H x W x C model inputs (through the serving preprocessing) and labels. Large
    splits go to a memory-mapped file in `workdir`: memory stays flat whatever the size."""
    rows = db.execute(
        select(DatasetItem.blob, DatasetItem.label)
        .where(DatasetItem.dataset_id == ds.id, DatasetItem.split == split)
        .order_by(DatasetItem.idx)
    ).all()
    n = len(rows)
    shape = (n, spec.height, spec.width, spec.channels)
    if n * spec.height * spec.width * spec.channels > MAX_MEMORY_BYTES:
        x: np.ndarray = np.lib.format.open_memmap(
            workdir / f"{split}.npy", mode="w+", dtype=np.uint8, shape=shape
        )
    else:
        x = np.empty(shape, dtype=np.uint8)
    y = np.fromiter((r.label for r in rows), dtype=np.int64, count=n)
    limits = Limits()
    for i, r in enumerate(rows):
        img = decode(blobs.get(r.blob), limits=limits)
        t = preprocess(img.pixels, spec).tensor  # C x H x W in [0, 1] (mean 0, std 1)
        x[i] = np.clip(np.rint(t.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
        if ctx is not None and i % 500 == 0:
            ctx.report(stage=f"loading {split} images", loaded=i, total=n)
    return x, y


def next_version(store: ModelStore, name: str) -> str:
    """After every version of `name` in the store and among the bundled models."""
    from clearscan.registry.manifest import ManifestError, load_manifest
    from clearscan.registry.service import BUNDLED_DIR

    versions = (
        [p.name for p in (store.root / name).iterdir()] if (store.root / name).is_dir() else []
    )
    for pkg in BUNDLED_DIR.iterdir() if BUNDLED_DIR.is_dir() else []:
        try:
            m = load_manifest(pkg)
        except (ManifestError, NotADirectoryError):
            continue
        if m.name == name:
            versions.append(m.version)
    versions = [v for v in versions if not v.startswith(".") and version_key(v) != (-1,)]
    if not versions:
        return "1.0.0"
    major, minor, *_ = max(versions, key=version_key).split("+")[0].split("-")[0].split(".")
    return f"{major}.{int(minor) + 1}.0"


def run_training(
    ctx: JobContext,
    *,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    store: ModelStore,
    on_registered: Any = None,
) -> dict[str, Any]:
    """The `train` job handler."""
    import torch

    from clearscan.training.image import RECIPES, train_image_classifier

    p = ctx.params
    req = TrainRequest(
        dataset=p["dataset"],
        recipe=p.get("recipe"),
        epochs=p.get("epochs"),
        seed=int(p.get("seed", 0)),
        model_name=p.get("model_name"),
        window=p.get("window"),
        step=p.get("step"),
    )
    with sessions() as db:
        ds = check_request(db, req)
        if ds.kind == "table":
            return _run_tabular(ctx, db, ds, req, sessions, blobs, store, on_registered)
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
        with tempfile.TemporaryDirectory(prefix="clearscan-train-") as tmp:
            work = Path(tmp)
            xtr, ytr = load_split(db, blobs, ds, "train", spec, work, ctx)
            xva, yva = load_split(db, blobs, ds, "val", spec, work, ctx)
            ds_name, ds_hash, classes = ds.name, ds.content_hash, list(ds.classes)
            counts = dict(ds.counts)

            def progress(row: dict[str, Any]) -> None:
                ctx.report(force=True, stage="training", **row)

            ctx.report(force=True, stage="training", epoch=0)
            trained = train_image_classifier(
                xtr, ytr, xva, yva, n_classes=len(classes), recipe=recipe, progress=progress
            )
            ctx.report(force=True, stage="exporting")
            name = req.model_name or re.sub(r"[^a-z0-9._-]", "-", ds_name)[:64]
            version = next_version(store, name)
            pkg = work / "package"
            _write_package(
                pkg,
                trained=trained,
                torch=torch,
                name=name,
                version=version,
                classes=classes,
                spec=spec,
                recipe=recipe.describe(),
                dataset={
                    "name": ds_name,
                    "hash": ds_hash,
                    "counts": counts,
                    "license": ds.info.get("license"),
                },
                xtr=xtr,
                xva=xva,
            )
            manifest = publish(ctx, sessions, store, pkg, name, on_registered)
    return {
        "model": manifest.ref,
        "name": manifest.name,
        "version": manifest.version,
        "recipe": recipe.describe(),
        "dataset": {"name": ds_name, "hash": ds_hash},
        "val_metrics": trained.val_metrics,
        "threshold": trained.threshold,
        "epochs_run": trained.info["epochs_run"],
        "best_epoch": trained.info["best_epoch"],
        "wall_s": trained.info["wall_s"],
    }


def _run_tabular(
    ctx: JobContext,
    db: Session,
    ds: Dataset,
    req: TrainRequest,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    store: ModelStore,
    on_registered: Any,
) -> dict[str, Any]:
    from clearscan.training import tabular

    ctx.report(force=True, stage="loading the table")
    try:
        table = tabular.load_table(blobs, ds, length=req.window, step=req.step)
        trained = tabular.train_tabular(
            table, classes=list(ds.classes), recipe=req.recipe or "auto", seed=req.seed, ctx=ctx
        )
    except tabular.TabularError as exc:
        raise TrainingError(str(exc)) from None
    name = req.model_name or re.sub(r"[^a-z0-9._-]", "-", ds.name)[:64]
    version = next_version(store, name)
    dataset = {"name": ds.name, "hash": ds.content_hash, "license": ds.info.get("license")}
    with tempfile.TemporaryDirectory(prefix="clearscan-train-") as tmp:
        pkg = Path(tmp) / "package"
        tabular.write_package(
            pkg,
            trained=trained,
            table=table,
            name=name,
            version=version,
            classes=list(ds.classes),
            dataset=dataset,
            seed=req.seed,
        )
        manifest = publish(ctx, sessions, store, pkg, name, on_registered)
    return {
        "model": manifest.ref,
        "name": manifest.name,
        "version": manifest.version,
        "recipe": trained["recipe"],
        "cross_validation": trained["cv"],
        "dataset": dataset,
        "val_metrics": trained["val_metrics"],
        "threshold": trained["threshold"],
        "feature_importance": trained["importance"][:20],
    }


def publish(
    ctx: JobContext,
    sessions: sessionmaker[Session],
    store: ModelStore,
    pkg: Path,
    name: str,
    on_registered: Any,
) -> ModelManifest:
    """The run's last step: unless cancelled, import the package as a new version in one atomic
    step (all or nothing); a new name gets no active version."""
    if ctx.cancelled():
        raise JobCancelled()
    _no_active_version_yet(sessions, name)
    manifest = store.import_package(pkg)
    if on_registered is not None:
        on_registered(manifest.name, manifest.version)
    return manifest


def _no_active_version_yet(sessions: sessionmaker[Session], name: str) -> None:
    """A trained model's first version must not start serving on its own: record the name's
    roll-out state with no active version (an admin activates one) unless it has a state."""
    from clearscan.registry.models import ModelState

    with sessions() as db:
        if db.get(ModelState, name) is None:
            db.add(
                ModelState(
                    name=name,
                    active_version="",
                    history=[],
                    canary_percent=0,
                    updated_by="training",
                )
            )
            db.commit()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_package(
    pkg: Path,
    *,
    trained: Any,
    torch: Any,
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
        f.name: _sha256(f) for f in sorted(pkg.iterdir()) if f.name != "manifest.json"
    }
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _model_card(
    name: str,
    version: str,
    classes: list[str],
    spec: InputSpec,
    recipe: dict[str, Any],
    dataset: dict[str, Any],
    trained: Any,
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
