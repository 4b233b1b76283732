"""scikit-learn runtime: an estimator saved with skops (`skops.io.dump`), never pickle or joblib.

skops rebuilds objects without running pickle. Types outside scikit-learn, NumPy and SciPy are
refused by name before anything is constructed, so a package cannot smuggle in a callable.

The estimator gets the preprocessed image flattened to one row of C*H*W values (in the package's
normalisation) and must implement `predict_proba`; its `classes_` order is the label order.
These models have no convolutional activation: no heatmaps. Tabular models (the manifest lists
`features`) take rows of raw feature values instead, and explain a prediction by per-feature
contributions (`explain.contributions`)."""

from __future__ import annotations

import importlib
import time
from typing import Any

import numpy as np

from clearscan.inference.base import Model
from clearscan.inference.explain.contributions import feature_contributions
from clearscan.inference.ood import TableOodReference
from clearscan.inference.types import BatchOutput, ModelLoadError

__all__ = ["SKLEARN_DATA_CLASSES", "SklearnModel", "load_skops", "trusted_type"]

# scikit-learn's own data classes that are not estimators but appear inside fitted models
SKLEARN_DATA_CLASSES = {
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.calibration._CalibratedClassifier",
}


def trusted_type(name: str) -> bool:
    """Whether skops may rebuild `name`: a class (never a function: skops calls what it rebuilds
    with arguments from the file) that is a scikit-learn estimator or one of its data classes,
    a NumPy dtype or scalar type, or a SciPy sparse matrix. Test helpers are never trusted."""
    module, _, attr = name.rpartition(".")
    root = module.split(".")[0]
    if root not in {"sklearn", "numpy", "scipy"}:
        return False
    if any(p in {"tests", "testing"} or p.startswith("_test") for p in module.split(".")):
        return False
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return False
    if not isinstance(obj, type):
        return False
    if root == "sklearn":
        from sklearn.base import BaseEstimator

        return (
            issubclass(obj, BaseEstimator)
            or name in SKLEARN_DATA_CLASSES
            or module.startswith("sklearn._loss")
        )
    if root == "numpy":
        # not ndarray subclasses such as numpy.memmap, whose constructor opens files
        return issubclass(obj, np.dtype | np.generic)
    import scipy.sparse

    return issubclass(obj, scipy.sparse.spmatrix | scipy.sparse.sparray)


def load_skops(path: Any, ref: str) -> Any:
    """Load a skops file, trusting only what `trusted_type` allows (checked before anything in
    the file is built)."""
    from skops.io import get_untrusted_types, load

    try:
        untrusted = get_untrusted_types(file=path)
    except Exception as exc:  # not a zip, no schema, truncated
        raise ModelLoadError(f"{ref}: not a readable skops file: {exc}") from None
    refused = sorted(t for t in untrusted if not trusted_type(t))
    if refused:
        raise ModelLoadError(
            f"{ref}: the skops file holds types that are not scikit-learn estimators, NumPy "
            f"dtypes or SciPy sparse matrices, refused: {', '.join(refused[:5])}"
        )
    try:
        return load(path, trusted=list(untrusted))
    except Exception as exc:
        raise ModelLoadError(f"{ref}: skops cannot load the estimator: {exc}") from None


class SklearnModel(Model):
    runtime = "sklearn"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._estimator: Any = None
        self.table_ood: TableOodReference | None = None  # tabular out-of-domain reference
        self.cam_error = "scikit-learn models have no convolutional activation to explain"
        if self.manifest.features is not None:
            self.cam_error = None  # tabular: per-feature contributions instead of heatmaps

    @property
    def explainable(self) -> bool:
        return False

    def _release(self) -> None:
        self._estimator = None

    def _load(self) -> None:
        m = self.manifest
        if self.device == "cuda":
            raise ModelLoadError(f"{m.ref}: scikit-learn models run on the CPU only")
        est = load_skops(self.package_dir / m.weights, m.ref)
        if not hasattr(est, "predict_proba"):
            raise ModelLoadError(f"{m.ref}: the estimator has no predict_proba")
        n_in = getattr(est, "n_features_in_", None)
        if m.features is not None:
            if n_in is not None and int(n_in) != len(m.features):
                raise ModelLoadError(
                    f"{m.ref}: the estimator takes {n_in} features, the manifest lists "
                    f"{len(m.features)}"
                )
        else:
            width = m.image.channels * m.image.height * m.image.width
            if n_in is not None and int(n_in) != width:
                raise ModelLoadError(
                    f"{m.ref}: the estimator takes {n_in} features, the manifest's input "
                    f"{m.image.channels} x {m.image.height} x {m.image.width} = {width}"
                )
        classes = getattr(est, "classes_", None)
        if classes is not None and len(classes) != len(m.labels):
            raise ModelLoadError(
                f"{m.ref}: labels has {len(m.labels)} entries but the estimator has "
                f"{len(classes)} classes"
            )
        names = list(classes) if classes is not None else []
        if names and all(isinstance(c, str) for c in names) and names != m.labels:
            raise ModelLoadError(
                f"{m.ref}: labels {m.labels} must be the estimator's classes_ in order: {names}"
            )
        self._estimator = est
        if m.features is not None and m.ood is not None:
            try:
                ref = TableOodReference.load(self.package_dir / m.ood.file)
            except (OSError, ValueError, KeyError) as exc:
                raise ModelLoadError(f"{m.ref}: ood.file {m.ood.file}: {exc}") from None
            if max(ref.columns, default=-1) >= len(m.features):
                raise ModelLoadError(f"{m.ref}: ood reference columns exceed the features")
            self.table_ood = ref
        if m.features is not None:
            probs = self.predict_rows(self.baseline_row()[None, :])
            self._check_width(probs)
            return
        out = self.run(self._probe_input(), explain=False)
        self._check_width(out.probabilities)

    # --- tabular models ---------------------------------------------------------------------

    def baseline_row(self) -> np.ndarray:
        """The features' baseline values (training median / mode) as one object row."""
        feats = self.manifest.features or []
        return np.array(
            [np.nan if f.baseline is None and f.type == "numeric" else f.baseline for f in feats],
            dtype=object,
        )

    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities (N x C, float64) for N x F rows of raw feature values."""
        est = self._estimator
        if est is None:
            raise ModelLoadError(f"{self.manifest.ref} is not loaded")
        try:
            return np.asarray(est.predict_proba(rows), dtype=np.float64)
        except Exception as exc:
            raise ModelLoadError(f"{self.manifest.ref}: predict_proba failed: {exc}") from None

    def ood_score(self, row: np.ndarray) -> float | None:
        """Distance of one row from the training rows (> 1: out of domain); None: no reference."""
        ref = self.table_ood
        return None if ref is None else round(float(ref.scores(row[None, :])[0]), 4)

    def explain_row(self, row: np.ndarray) -> tuple[np.ndarray, int, list[float]]:
        """Probabilities and decided class of one row, and per-feature contributions: how much
        the log-odds of the decided class drop when that feature alone is replaced by its
        training baseline (one predict_proba call for all features; log-odds, so features
        still count when the probability is saturated near 0 or 1)."""
        return feature_contributions(row, self.baseline_row(), self.predict_rows, self._decide)

    def run(self, batch: np.ndarray, *, explain: bool, method: str = "gradcam") -> BatchOutput:
        est = self._estimator
        if est is None:
            raise ModelLoadError(f"{self.manifest.ref} is not loaded")
        t0 = time.perf_counter()
        rows = np.ascontiguousarray(batch.reshape(batch.shape[0], -1))
        try:
            probs = np.asarray(est.predict_proba(rows), dtype=np.float32)
        except Exception as exc:
            raise ModelLoadError(f"{self.manifest.ref}: predict_proba failed: {exc}") from None
        run_ms = (time.perf_counter() - t0) * 1000
        return BatchOutput(probabilities=probs, top=self._decide(probs), cams=None, run_ms=run_ms)
