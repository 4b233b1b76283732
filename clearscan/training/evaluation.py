"""Evaluations: the `evaluate` job. A model version is run on one split of a dataset through
the same path as serving (decode -> the model's preprocessing -> its runtime and decision
threshold; for tables, the feature values by column name), and the result is saved as JSON plus
a self-contained HTML report (tables and SVG plots), both as blobs referenced by the job."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clearscan.datasets import service as datasets
from clearscan.datasets.importers import DatasetError
from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.errors import Unprocessable
from clearscan.imaging import Limits, decode
from clearscan.inference.preprocess import preprocess
from clearscan.jobs.service import JobContext, JobError
from clearscan.registry.catalog import ModelEntry
from clearscan.registry.errors import RegistryError
from clearscan.registry.routing import ModelRegistry
from clearscan.storage.base import BlobStore
from clearscan.training.metrics import evaluate_predictions

EVAL_KIND: Final = "evaluate"
BATCH = 64


class EvaluationError(JobError, Unprocessable):
    """An evaluation that does not fit its model, dataset or split (422)."""

    status_code = 422


@dataclass(frozen=True)
class EvalRequest:
    model: str  # NAME (the active version) or NAME:VERSION
    dataset: str
    split: str = "test"

    def to_params(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "split": self.split}


def resolve(
    db: Session, registry: ModelRegistry, req: EvalRequest
) -> tuple[ModelEntry, Dataset, dict[int, int]]:
    """The model version, the dataset, and the map dataset class index -> model label index;
    EvaluationError (422) naming what does not fit."""
    name, _, version = req.model.partition(":")
    try:
        entry = registry.version(name, version) if version else registry.get(name)
        ds = datasets.get(db=db, ref=req.dataset)
    except (RegistryError, DatasetError) as exc:
        raise EvaluationError(exc.detail) from None
    if req.split not in ds.counts:
        raise EvaluationError(
            f"dataset {ds.name!r} has no {req.split!r} split (it has {', '.join(ds.counts)})"
        )
    m = entry.manifest
    if m.task == "segmentation" or ds.kind == "segmentation":
        raise EvaluationError(
            f"model {m.ref} and dataset {ds.name!r}: evaluations of segmentations (Dice, "
            "clDice, HD95) are not available yet; evaluations are of classifiers on image or "
            "table datasets"
        )
    if m.tabular != (ds.kind == "table"):
        kind = "feature values" if m.tabular else "images"
        raise EvaluationError(f"model {m.ref} takes {kind}; dataset {ds.name!r} is {ds.kind}")
    missing = [c for c in ds.classes if c not in m.labels]
    if missing:
        raise EvaluationError(
            f"dataset classes {missing} are not labels of {m.ref} ({', '.join(m.labels)})"
        )
    if m.tabular:
        cols = set(ds.info.get("feature_columns", []))
        needed = m.window.channels if m.window else [f.name for f in m.features or []]
        absent = [n for n in needed if n not in cols]
        if absent:
            raise EvaluationError(f"dataset {ds.name!r} lacks the model's features {absent[:10]}")
    mapping = {i: m.labels.index(c) for i, c in enumerate(ds.classes)}
    return entry, ds, mapping


def _positive(entry: ModelEntry) -> int | None:
    m = entry.manifest
    if len(m.labels) != 2:
        return None
    return m.labels.index(m.threshold.label) if m.threshold else 1


def run_evaluation(
    ctx: JobContext, *, sessions: sessionmaker[Session], blobs: BlobStore, registry: ModelRegistry
) -> dict[str, Any]:
    req = EvalRequest(**ctx.params)
    with sessions() as db:
        entry, ds, mapping = resolve(db, registry, req)
        ds_name, ds_hash = ds.name, ds.content_hash
        with registry.lease(entry) as model:
            if entry.manifest.tabular:
                y, pred, prob = _tabular(ctx, blobs, ds, req.split, model, mapping)
            else:
                y, pred, prob = _images(ctx, db, blobs, ds, req.split, model, mapping)
    m = entry.manifest
    report = evaluate_predictions(y, pred, prob, list(m.labels), positive=_positive(entry))
    report.update(
        model={"name": m.name, "version": m.version},
        dataset={"name": ds_name, "hash": ds_hash},
        split=req.split,
    )
    json_blob = blobs.put(json.dumps(report, indent=1).encode())
    html_blob = blobs.put(render_report(report).encode())
    return {**report, "json_blob": json_blob, "report_blob": html_blob}


def _images(
    ctx: JobContext,
    db: Session,
    blobs: BlobStore,
    ds: Dataset,
    split: str,
    model: Any,
    mapping: dict[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = db.execute(
        select(DatasetItem.blob, DatasetItem.label)
        .where(DatasetItem.dataset_id == ds.id, DatasetItem.split == split)
        .order_by(DatasetItem.idx)
    ).all()
    spec = model.manifest.image
    limits = Limits()
    ys, preds, probs = [], [], []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        batch = np.stack(
            [
                preprocess(decode(blobs.get(r.blob), limits=limits).pixels, spec).tensor
                for r in chunk
            ]
        )
        out = model.run(batch, explain=False)
        probs.append(out.probabilities.astype(np.float64))
        preds.append(out.top.astype(np.int64))
        ys += [mapping[r.label] for r in chunk]
        ctx.report(stage="evaluating", done=start + len(chunk), total=len(rows))
    return np.array(ys, dtype=np.int64), np.concatenate(preds), np.concatenate(probs)


def _tabular(
    ctx: JobContext,
    blobs: BlobStore,
    ds: Dataset,
    split: str,
    model: Any,
    mapping: dict[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from clearscan.training.tabular import load_table

    w = model.manifest.window
    table = load_table(blobs, ds, length=w.length if w else None, step=w.step if w else None)
    names = [f["name"] for f in table.features]
    order = [names.index(f.name) for f in model.manifest.features]
    mask = np.array([s == split for s in table.splits])
    x = table.x[mask][:, order]
    prob = model.predict_rows(x)
    pred = model._decide(prob).astype(np.int64)
    y = np.array([mapping[int(v)] for v in table.y[mask]], dtype=np.int64)
    ctx.report(stage="evaluating", done=len(y), total=len(y))
    return y, pred, prob


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two evaluations of the same dataset split, side by side (b minus a)."""
    if (a["dataset"]["hash"], a["split"]) != (b["dataset"]["hash"], b["split"]):
        raise EvaluationError("the two evaluations are not on the same dataset split")
    keys = sorted(set(a["metrics"]) & set(b["metrics"]))
    return {
        "dataset": a["dataset"],
        "split": a["split"],
        "n": a["n"],
        "a": {"model": a["model"], "metrics": a["metrics"], "ci95": a["ci95"]},
        "b": {"model": b["model"], "metrics": b["metrics"], "ci95": b["ci95"]},
        "difference": {k: round(b["metrics"][k] - a["metrics"][k], 5) for k in keys},
        "ece": {"a": a["calibration"]["ece"], "b": b["calibration"]["ece"]},
    }


# --- the HTML report ------------------------------------------------------------------------------


def _svg_curve(series: dict[str, tuple[list[float], list[float]]], *, diagonal: bool) -> str:
    """A 320 x 320 plot of [0, 1] x [0, 1] curves (presentation attributes only: CSP-safe)."""
    colours = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#0969da"]
    size, pad = 320, 30
    span = size - 2 * pad

    def pt(x: float, y: float) -> str:
        return f"{pad + x * span:.1f},{size - pad - y * span:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
        f'viewBox="0 0 {size} {size}" role="img">',
        f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="none" stroke="#999"/>',
    ]
    if diagonal:
        parts.append(
            f'<polyline points="{pt(0, 0)} {pt(1, 1)}" fill="none" stroke="#bbb" '
            'stroke-dasharray="4 4"/>'
        )
    for i, (label, (xs, ys)) in enumerate(series.items()):
        if not xs:
            continue
        c = colours[i % len(colours)]
        pts = " ".join(pt(x, y) for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        parts.append(
            f'<text x="{pad + 6}" y="{pad + 16 + 14 * i}" font-size="12" fill="{c}">'
            f"{html.escape(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_report(r: dict[str, Any]) -> str:
    e = html.escape
    m, ci = r["metrics"], r["ci95"]

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    rows = "".join(
        f"<tr><td>{e(k)}</td><td>{num(v)}</td><td>{num((ci.get(k) or [None, None])[0])} - "
        f"{num((ci.get(k) or [None, None])[1])}</td></tr>"
        for k, v in m.items()
    )
    per_class = "".join(
        f"<tr><td>{e(c['label'])}</td><td>{c['precision']:.4f}</td><td>{c['recall']:.4f}</td>"
        f"<td>{c['f1']:.4f}</td><td>{c['support']}</td></tr>"
        for c in r["per_class"]
    )
    labels = r["confusion"]["labels"]
    conf = "".join(
        f"<tr><th>{e(labels[i])}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for i, row in enumerate(r["confusion"]["matrix"])
    )
    roc = _svg_curve({f"ROC {k}": (v["fpr"], v["tpr"]) for k, v in r["roc"].items()}, diagonal=True)
    bins = r["calibration"]["bins"]
    cal = _svg_curve(
        {"calibration": ([b["confidence"] for b in bins], [b["accuracy"] for b in bins])},
        diagonal=True,
    )
    model = f"{r['model']['name']}:{r['model']['version']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Evaluation of {e(model)} on {e(r["dataset"]["name"])} ({e(r["split"])})</title>
<link rel="stylesheet" href="/static/clearscan.css"></head>
<body><main class="report">
<h1>Evaluation of {e(model)}</h1>
<p>Dataset <strong>{e(r["dataset"]["name"])}</strong> (hash <code>{e(r["dataset"]["hash"])}</code>),
split <strong>{e(r["split"])}</strong>, n = {r["n"]}.
{"Positive class: " + e(r["positive_label"]) + "." if r.get("positive_label") else ""}
Decisions use the model's own threshold. Intervals: 95% percentile bootstrap (1,000 resamples).</p>
<h2>Metrics</h2>
<table><thead><tr><th>metric</th><th>value</th><th>95% CI</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>Per class</h2>
<table><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>n</th></tr></thead>
<tbody>{per_class}</tbody></table>
<h2>Confusion matrix (rows: true, columns: predicted)</h2>
<table><thead><tr><th></th>{"".join(f"<th>{e(x)}</th>" for x in labels)}</tr></thead>
<tbody>{conf}</tbody></table>
<h2>ROC</h2>{roc}
<h2>Calibration (expected calibration error {r["calibration"]["ece"]:.4f})</h2>{cal}
</main></body></html>
"""
