"""Tabular classifiers (scikit-learn): a table dataset -> preprocessing pipeline (median
imputation + scaling for numeric columns, most-frequent imputation + one-hot for categorical
ones) -> logistic regression, random forest or gradient boosting, chosen by stratified 5-fold
cross-validated AUC on the train split -> refit on train -> validation metrics, threshold and
permutation feature importance -> a skops package (never pickle)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clearscan.datasets.importers import SPLITS
from clearscan.datasets.models import Dataset
from clearscan.jobs.service import JobContext
from clearscan.storage.base import BlobStore
from clearscan.training.metrics import choose_threshold, classification_metrics

TABULAR_RECIPES = ("auto", "logistic-regression", "random-forest", "gradient-boosting")
FOLDS = 5


class TabularError(ValueError):
    pass


@dataclass
class Table:
    x: np.ndarray  # N x F object array (float or NaN for numeric, str or None for categorical)
    y: np.ndarray  # N class indices
    splits: list[str]
    features: list[dict[str, Any]]  # {name, type}
    window: dict[str, Any] | None = None  # sensor streams: channels, length, step, sample_rate
    groups: list[str] | None = None  # recording of each row (cross-validation keeps them whole)


def load_table(
    blobs: BlobStore, ds: Dataset, *, length: int | None = None, step: int | None = None
) -> Table:
    """The dataset's rows as model inputs; for a sensor stream (time column), one row per
    window of `length` samples moved by `step` (see clearscan.training.features)."""
    raw = _read_rows(blobs, ds)
    info = ds.info
    if not info.get("time_column"):
        return raw
    from clearscan.training import features as wf

    channels = [f["name"] for f in raw.features if f["type"] == "numeric"]
    if not channels:
        raise TabularError("a sensor stream needs numeric channel columns")
    idx = [[f["name"] for f in raw.features].index(c) for c in channels]
    x = raw.x[:, idx].astype(np.float64)
    times = _column(blobs, ds, info["time_column"])
    groups = _column(blobs, ds, info["group_column"]) if info.get("group_column") else None
    rate = wf.sample_rate_of(times)
    length = length or wf.DEFAULT_LENGTH
    step = step or wf.DEFAULT_STEP
    try:
        fx, fy, fsplits, prov = wf.windows(
            x, raw.y, raw.splits, groups, times, length=length, step=step, sample_rate=rate
        )
    except wf.WindowError as exc:
        raise TabularError(str(exc)) from None
    names = wf.feature_names(channels)
    return Table(
        fx.astype(object),
        fy,
        fsplits,
        [{"name": n, "type": "numeric"} for n in names],
        window={"channels": channels, "length": length, "step": step, "sample_rate": rate},
        groups=[p["group"] for p in prov] if groups is not None else None,
    )


def _column(blobs: BlobStore, ds: Dataset, name: str) -> list[str]:
    with blobs.open(ds.info["csv_blob"]) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        header = [h.strip() for h in next(reader)]
        j = header.index(name)
        return [row[j].strip() for row in reader if row]


def _read_rows(blobs: BlobStore, ds: Dataset) -> Table:
    info = ds.info
    columns = {c["name"]: c for c in info["columns"]}
    names = list(info["feature_columns"])
    target = info["target"]
    class_index = {c: i for i, c in enumerate(ds.classes)}
    with blobs.open(info["csv_blob"]) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        header = [h.strip() for h in next(reader)]
        idx = [header.index(n) for n in names]
        t_i = header.index(target)
        rows: list[list[Any]] = []
        labels: list[int] = []
        numeric = [columns[n]["type"] == "numeric" for n in names]
        for row in reader:
            if not row:
                continue
            out: list[Any] = []
            for j, is_num in zip(idx, numeric, strict=True):
                v = row[j].strip()
                missing = v == "" or v.lower() in {"na", "nan", "null", "none"}
                if is_num:
                    out.append(math.nan if missing else float(v))
                else:
                    out.append(None if missing else v)
            rows.append(out)
            labels.append(class_index[row[t_i].strip()])
    split_bytes = blobs.get(info["split_blob"])
    splits = [SPLITS[b] for b in split_bytes]
    if len(splits) != len(rows):
        raise TabularError("the stored split does not match the table's rows")
    x = np.empty((len(rows), len(names)), dtype=object)
    for i, r in enumerate(rows):
        x[i, :] = r
    features = [
        {"name": n, "type": "numeric" if is_num else "categorical"}
        for n, is_num in zip(names, numeric, strict=True)
    ]
    return Table(x, np.array(labels, dtype=np.int64), splits, features)


def _pipeline(recipe: str, features: list[dict[str, Any]], seed: int) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num = [i for i, f in enumerate(features) if f["type"] == "numeric"]
    cat = [i for i, f in enumerate(features) if f["type"] == "categorical"]
    parts = []
    if num:
        parts.append(
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                num,
            )
        )
    if cat:
        parts.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                cat,
            )
        )
    pre = ColumnTransformer(parts, sparse_threshold=0.0)
    clf: Any
    if recipe == "logistic-regression":
        clf = LogisticRegression(max_iter=5000, C=1.0, class_weight="balanced")
    elif recipe == "random-forest":
        clf = RandomForestClassifier(
            n_estimators=300, class_weight="balanced", random_state=seed, n_jobs=1
        )
    elif recipe == "gradient-boosting":
        clf = GradientBoostingClassifier(random_state=seed)
    else:
        raise TabularError(f"unknown tabular recipe {recipe!r}")
    return Pipeline([("pre", pre), ("clf", clf)])


def _auc(y: np.ndarray, prob: np.ndarray) -> float:
    from clearscan.training.metrics import macro_auc

    return macro_auc(y, prob)


def train_tabular(
    table: Table, *, classes: list[str], recipe: str, seed: int, ctx: JobContext | None
) -> dict[str, Any]:
    from sklearn.base import clone
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    train = np.array([s == "train" for s in table.splits])
    val = np.array([s == "val" for s in table.splits])
    xtr, ytr, xva, yva = table.x[train], table.y[train], table.x[val], table.y[val]
    smallest = int(np.bincount(ytr, minlength=len(classes)).min())
    if len(ytr) < FOLDS or smallest < FOLDS:
        raise TabularError(
            f"{FOLDS}-fold cross-validation needs at least {FOLDS} train rows of every class; "
            f"the smallest class has {smallest}"
        )
    candidates = (
        ["logistic-regression", "random-forest", "gradient-boosting"]
        if recipe == "auto"
        else [recipe]
    )
    groups = np.array(table.groups)[train] if table.groups is not None else None
    if groups is not None:
        per_class = [len(set(groups[ytr == k])) for k in range(len(classes))]
        if min(per_class) < FOLDS:
            raise TabularError(
                f"{FOLDS}-fold cross-validation by recording needs at least {FOLDS} train "
                f"recordings of every class; the smallest class has {min(per_class)}"
            )
        folds: Any = StratifiedGroupKFold(FOLDS, shuffle=True, random_state=seed)
    else:
        folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    cv: dict[str, dict[str, float]] = {}
    for k, name in enumerate(candidates):
        if ctx is not None:
            ctx.report(
                force=True, stage=f"cross-validating {name}", step=k + 1, steps=len(candidates)
            )
        aucs = []
        for tr_i, te_i in folds.split(xtr, ytr, groups):
            model = _pipeline(name, table.features, seed).fit(xtr[tr_i], ytr[tr_i])
            aucs.append(_auc(ytr[te_i], model.predict_proba(xtr[te_i])))
        cv[name] = {
            "auc_mean": round(float(np.mean(aucs)), 5),
            "auc_std": round(float(np.std(aucs)), 5),
        }
    chosen = max(candidates, key=lambda n: (cv[n]["auc_mean"], -candidates.index(n)))
    model = _pipeline(chosen, table.features, seed).fit(xtr, ytr)
    prob = model.predict_proba(xva)
    threshold = None
    if len(classes) == 2:
        threshold, _ = choose_threshold(yva, prob[:, 1])
        pred = (prob[:, 1] >= threshold).astype(np.int64)
    else:
        pred = prob.argmax(axis=1)
    metrics = classification_metrics(yva, pred, prob)
    imp = permutation_importance(
        clone(model).fit(xtr, ytr),
        xva,
        yva,
        scoring="roc_auc" if len(classes) == 2 else None,
        n_repeats=5,
        random_state=seed,
    )
    importance = sorted(
        (
            {"feature": f["name"], "importance": round(float(m), 5)}
            for f, m in zip(table.features, imp.importances_mean, strict=True)
        ),
        key=lambda d: -d["importance"],
    )
    baselines = []
    for j, f in enumerate(table.features):
        col = xtr[:, j]
        if f["type"] == "numeric":
            vals = np.array([v for v in col if not (isinstance(v, float) and math.isnan(v))])
            baselines.append(float(np.median(vals)) if vals.size else None)
        else:
            present = [v for v in col if v is not None]
            baselines.append(max(set(present), key=present.count) if present else None)
    from clearscan.inference.ood import fit_table_reference

    numeric = [i for i, f in enumerate(table.features) if f["type"] == "numeric"]
    ood = fit_table_reference(xtr, xva, numeric) if numeric and len(xtr) > len(numeric) else None
    return {
        "model": model,
        "ood": ood,
        "recipe": chosen,
        "cv": cv,
        "val_metrics": metrics,
        "threshold": threshold,
        "importance": importance,
        "baselines": baselines,
        "n_train": int(train.sum()),
    }


def write_package(
    pkg: Path,
    *,
    trained: dict[str, Any],
    table: Table,
    name: str,
    version: str,
    classes: list[str],
    dataset: dict[str, Any],
    seed: int,
) -> None:
    import hashlib

    from skops.io import dump

    pkg.mkdir(parents=True)
    dump(trained["model"], pkg / "model.skops")
    if trained.get("ood") is not None:
        (pkg / "ood_reference.json").write_text(json.dumps(trained["ood"].to_json()))
    v = trained["val_metrics"]
    card = "\n".join(
        [
            f"# {name} {version}",
            "",
            "## Intended use",
            "Trained in ClearScan on a table. Research and validation only until a responsible "
            "person has evaluated it and activated it. Not for clinical use.",
            "",
            "## Data",
            f"Dataset `{dataset['name']}`, content hash `{dataset['hash']}`, "
            f"{len(table.features)} features, classes {', '.join(classes)}."
            + (f" Data licence: {dataset['license']}" if dataset.get("license") else ""),
            "",
            "## Recipe",
            f"`{trained['recipe']}` chosen by {FOLDS}-fold cross-validated AUC on the train split "
            f"({trained['n_train']} rows; seed {seed}): `{json.dumps(trained['cv'])}`. "
            "Median imputation + standard scaling (numeric), most-frequent imputation + one-hot "
            "(categorical).",
            "",
            "## Validation metrics",
            f"n = {v['n']}: accuracy {v['accuracy']}, AUC {v['auc']}, balanced accuracy "
            f"{v['balanced_accuracy']}"
            + (
                f", threshold {trained['threshold']:.4f} on P({classes[1]})."
                if trained["threshold"] is not None
                else "."
            ),
            "",
            "## Out-of-domain guard",
            "Each prediction carries the Mahalanobis distance of its numeric features from the "
            "training rows, divided by the 99.5% quantile of the validation rows' distances; "
            "above 1 it is flagged out of domain."
            if trained.get("ood") is not None
            else "No numeric features: no out-of-domain reference.",
            "",
            "## Most important features (permutation importance on validation)",
            *[f"- {d['feature']}: {d['importance']}" for d in trained["importance"][:10]],
        ]
    )
    (pkg / "MODEL_CARD.md").write_text(card + "\n")
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "task": "classification",
        "runtime": "sklearn",
        "weights": "model.skops",
        "labels": classes,
        "description": f"Trained in ClearScan on table {dataset['name']} ({trained['recipe']}).",
        "features": [
            {**f, "baseline": b} for f, b in zip(table.features, trained["baselines"], strict=True)
        ],
        **({"window": table.window} if table.window else {}),
        **({"ood": {"file": "ood_reference.json"}} if trained.get("ood") is not None else {}),
        "output": {"name": "probabilities", "kind": "probabilities"},
        "explain": {"method": "none"},
        "metrics": {
            "validation": v,
            "cross_validation": trained["cv"],
            "feature_importance": trained["importance"],
        },
        "training": {
            "dataset": dataset["name"],
            "dataset_hash": dataset["hash"],
            "recipe": trained["recipe"],
            "seed": seed,
        },
        "intended_use": "Research and validation inside ClearScan.",
        **(
            {"license": f"Trained on data licensed as: {dataset['license']}"}
            if dataset.get("license")
            else {}
        ),
        "model_card": "MODEL_CARD.md",
    }
    if trained["threshold"] is not None:
        value = min(max(float(trained["threshold"]), 1e-6), 1 - 1e-6)
        manifest["threshold"] = {"label": classes[1], "value": round(value, 6)}
    manifest["files"] = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(pkg.iterdir())
        if f.name != "manifest.json"
    }
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=2))


def preview(
    db: Any,
    blobs: BlobStore,
    ds: Dataset,
    *,
    length: int | None = None,
    step: int | None = None,
    limit: int = 20,
) -> dict[str, Any]:
    """The feature table a training run would use (first `limit` rows) and the permutation
    importance of the latest model trained on the dataset."""
    table = load_table(blobs, ds, length=length, step=step)
    names = [f["name"] for f in table.features]

    def cell(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return round(v, 6) if isinstance(v, float) else v

    rows = [
        {
            "split": table.splits[i],
            "label": ds.classes[int(table.y[i])],
            "values": dict(zip(names, (cell(v) for v in table.x[i]), strict=True)),
        }
        for i in range(min(limit, len(table.y)))
    ]
    return {
        "dataset": ds.name,
        "features": table.features,
        "window": table.window,
        "n_rows": len(table.y),
        "rows": rows,
        "importance": latest_importance(db, ds),
    }


def latest_importance(db: Any, ds: Dataset) -> dict[str, Any] | None:
    """Feature importance of the newest succeeded training run on this dataset."""
    from sqlalchemy import select

    from clearscan.jobs.models import Job

    runs = db.scalars(
        select(Job)
        .where(Job.kind == "train", Job.status == "succeeded")
        .order_by(Job.finished_at.desc())
    ).all()
    for job in runs:
        if job.params.get("dataset") in (ds.name, ds.id) and job.result:
            imp = job.result.get("feature_importance")
            if imp:
                return {"model": job.result.get("model"), "items": imp}
    return None
