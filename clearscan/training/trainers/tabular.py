"""The tabular trainer (scikit-learn): a table dataset -> preprocessing pipeline (median
imputation + scaling for numeric columns, most-frequent imputation + one-hot for categorical
ones) -> logistic regression, random forest or gradient boosting, chosen by stratified 5-fold
cross-validated AUC on the train split (by recording for sensor streams) -> refit on train ->
validation metrics, threshold and permutation feature importance -> a skops package (never
pickle). Needs no PyTorch."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clearscan.jobs.service import JobContext
from clearscan.training.metrics import choose_threshold, classification_metrics, macro_auc
from clearscan.training.tabular import Table, TabularError, load_table
from clearscan.training.trainers.base import Fitted, Trainer, TrainJob, TrainResult

FOLDS = 5


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
            aucs.append(macro_auc(ytr[te_i], model.predict_proba(xtr[te_i])))
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


@dataclass
class FittedTable(Fitted):
    trained: dict[str, Any]  # what train_tabular returns
    result: TrainResult
    table: Table
    classes: list[str]
    seed: int

    def write_package(self, pkg: Path, *, name: str, version: str) -> None:
        write_package(
            pkg,
            trained=self.trained,
            table=self.table,
            name=name,
            version=version,
            classes=self.classes,
            dataset=self.result.dataset,
            seed=self.seed,
        )


class TabularTrainer(Trainer):
    dataset_kind = "table"

    def train(self, job: TrainJob) -> FittedTable:
        ds, req = job.dataset, job.request
        job.ctx.report(force=True, stage="loading the table")
        table = load_table(job.blobs, ds, length=req.window, step=req.step)
        classes = list(ds.classes)
        trained = train_tabular(
            table, classes=classes, recipe=req.recipe or "auto", seed=req.seed, ctx=job.ctx
        )
        result = TrainResult(
            kind="table",
            recipe=trained["recipe"],
            val_metrics=trained["val_metrics"],
            threshold=trained["threshold"],
            dataset={"name": ds.name, "hash": ds.content_hash, "license": ds.info.get("license")},
            cross_validation=trained["cv"],
            feature_importance=trained["importance"],
        )
        return FittedTable(trained, result, table, classes, req.seed)


TRAINER = TabularTrainer()
