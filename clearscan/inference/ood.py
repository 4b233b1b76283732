"""Out-of-domain guard: how far an input lies from the model's training inputs.

Two distances, each divided by its threshold (a high quantile of the validation split's scores),
and the larger one reported, so a score above 1 means "outside what the model was trained on":
- feature distance: Mahalanobis distance of the global-average-pooled target activation from the
  training images' (shrunk covariance; Lee et al., NeurIPS 2018, class-agnostic form); it comes
  from the same ONNX Runtime run as the prediction and the heatmap;
- pixel distance: the residual of the model input after projection on the top principal
  components of the training inputs (what the network's features can miss: a photograph, a CT
  or MR slice has a layout no chest radiograph has).
Both are cheap (a K x K and a D x k product per image)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METHOD = "mahalanobis-gap+pca-residual"


@dataclass(frozen=True)
class OodReference:
    mean: np.ndarray  # K pooled-feature mean
    precision: np.ndarray  # K x K inverse of the shrunk covariance
    feature_threshold: float
    pixel_mean: np.ndarray  # D (flattened model input)
    components: np.ndarray  # k x D principal directions of the training inputs
    pixel_threshold: float
    quantile: float
    n_train: int

    def feature_distance(self, activation: np.ndarray) -> np.ndarray:
        feats = activation.mean(axis=(2, 3), dtype=np.float64) - self.mean
        return np.sqrt(np.einsum("nk,kl,nl->n", feats, self.precision, feats).clip(min=0))

    def pixel_distance(self, batch: np.ndarray) -> np.ndarray:
        x = batch.reshape(len(batch), -1).astype(np.float64) - self.pixel_mean
        resid = x - (x @ self.components.T) @ self.components
        return np.sqrt((resid**2).sum(axis=1))

    def scores(self, activation: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """N scores; > 1 means out of domain."""
        return np.maximum(
            self.feature_distance(activation) / self.feature_threshold,
            self.pixel_distance(batch) / self.pixel_threshold,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "method": METHOD,
            "mean": self.mean.tolist(),
            "precision": self.precision.tolist(),
            "feature_threshold": self.feature_threshold,
            "pixel_mean": self.pixel_mean.tolist(),
            "components": self.components.tolist(),
            "pixel_threshold": self.pixel_threshold,
            "quantile": self.quantile,
            "n_train": self.n_train,
        }

    @classmethod
    def load(cls, path: Path) -> OodReference:
        raw = json.loads(path.read_text())
        if raw.get("method") != METHOD:
            raise ValueError(f"{path.name}: unknown out-of-domain method {raw.get('method')!r}")
        mean = np.asarray(raw["mean"], dtype=np.float64)
        precision = np.asarray(raw["precision"], dtype=np.float64)
        pixel_mean = np.asarray(raw["pixel_mean"], dtype=np.float64)
        components = np.asarray(raw["components"], dtype=np.float64)
        if precision.shape != (mean.size, mean.size):
            raise ValueError(f"{path.name}: precision shape does not match the mean")
        if components.ndim != 2 or components.shape[1] != pixel_mean.size:
            raise ValueError(f"{path.name}: components do not match the pixel mean")
        return cls(
            mean,
            precision,
            float(raw["feature_threshold"]),
            pixel_mean,
            components,
            float(raw["pixel_threshold"]),
            float(raw["quantile"]),
            int(raw["n_train"]),
        )


def fit_reference(
    train_features: np.ndarray,
    val_features: np.ndarray,
    train_inputs: np.ndarray,
    val_inputs: np.ndarray,
    *,
    quantile: float = 0.995,
    shrinkage: float = 0.05,
    components: int = 16,
) -> OodReference:
    """Features: N x K pooled activations; inputs: N x ... model inputs. Thresholds on val."""
    mean = train_features.mean(axis=0)
    cov = np.cov(train_features - mean, rowvar=False)
    target = np.eye(cov.shape[0]) * np.trace(cov) / cov.shape[0]
    precision = np.linalg.inv((1 - shrinkage) * cov + shrinkage * target)
    flat = train_inputs.reshape(len(train_inputs), -1).astype(np.float64)
    pixel_mean = flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat - pixel_mean, full_matrices=False)
    ref = OodReference(
        mean, precision, 1.0, pixel_mean, vt[:components], 1.0, quantile, len(train_features)
    )
    f_thr = float(np.quantile(ref.feature_distance(val_features[:, :, None, None]), quantile))
    p_thr = float(np.quantile(ref.pixel_distance(val_inputs), quantile))
    return OodReference(
        mean, precision, f_thr, pixel_mean, vt[:components], p_thr, quantile, len(train_features)
    )


TABLE_METHOD = "mahalanobis-numeric-features"


@dataclass(frozen=True)
class TableOodReference:
    """Tabular models: Mahalanobis distance of a row's numeric features (median-imputed,
    standardised, shrunk covariance) from the training rows, divided by a high quantile of the
    validation rows' distances (> 1: out of domain)."""

    columns: list[int]  # positions of the numeric features in the model's feature order
    median: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    n_train: int

    def _matrix(self, rows: np.ndarray) -> np.ndarray:
        x = np.asarray(rows[:, self.columns], dtype=np.float64)
        x = np.where(np.isnan(x), self.median, x)
        return (x - self.mean) / self.scale

    def distance(self, rows: np.ndarray) -> np.ndarray:
        z = self._matrix(rows)
        return np.sqrt(np.einsum("nk,kl,nl->n", z, self.precision, z).clip(min=0))

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return self.distance(rows) / self.threshold

    def to_json(self) -> dict[str, object]:
        return {
            "method": TABLE_METHOD,
            "columns": self.columns,
            "median": self.median.tolist(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "precision": self.precision.tolist(),
            "threshold": self.threshold,
            "quantile": self.quantile,
            "n_train": self.n_train,
        }

    @classmethod
    def load(cls, path: Path) -> TableOodReference:
        raw = json.loads(path.read_text())
        if raw.get("method") != TABLE_METHOD:
            raise ValueError(f"{path.name}: unknown out-of-domain method {raw.get('method')!r}")
        median, mean, scale = (
            np.asarray(raw[k], dtype=np.float64) for k in ("median", "mean", "scale")
        )
        precision = np.asarray(raw["precision"], dtype=np.float64)
        k = len(raw["columns"])
        if any(a.shape != (k,) for a in (median, mean, scale)) or precision.shape != (k, k):
            raise ValueError(f"{path.name}: shapes do not match the {k} columns")
        return cls(
            [int(c) for c in raw["columns"]],
            median,
            mean,
            scale,
            precision,
            float(raw["threshold"]),
            float(raw["quantile"]),
            int(raw["n_train"]),
        )


def fit_table_reference(
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    columns: list[int],
    *,
    quantile: float = 0.995,
    shrinkage: float = 0.05,
) -> TableOodReference:
    """Rows: N x F object arrays of raw feature values (NaN for missing numeric values)."""
    x = np.asarray(train_rows[:, columns], dtype=np.float64)
    median = np.nanmedian(x, axis=0)
    median = np.where(np.isnan(median), 0.0, median)
    x = np.where(np.isnan(x), median, x)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    cov = np.atleast_2d(np.cov(z, rowvar=False))
    target = np.eye(len(columns)) * np.trace(cov) / len(columns)
    precision = np.linalg.inv((1 - shrinkage) * cov + shrinkage * target)
    ref = TableOodReference(columns, median, mean, scale, precision, 1.0, quantile, len(x))
    threshold = float(np.quantile(ref.distance(val_rows), quantile)) or 1.0
    return TableOodReference(columns, median, mean, scale, precision, threshold, quantile, len(x))
