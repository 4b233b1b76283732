"""scikit-learn runtime: an estimator saved with skops (`skops.io.dump`), never pickle or joblib.

skops rebuilds objects without running pickle. Types outside scikit-learn, NumPy and SciPy are
refused by name before anything is constructed, so a package cannot smuggle in a callable.

The estimator gets the preprocessed image flattened to one row of C*H*W values (in the package's
normalisation) and must implement `predict_proba`; its `classes_` order is the label order.
These models have no convolutional activation: no heatmaps."""

from __future__ import annotations

import importlib
import time
from typing import Any

import numpy as np

from clearscan.inference.runtime import BatchOutput, Model, ModelLoadError

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
        self.cam_error = "scikit-learn models have no convolutional activation to explain"

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
        width = m.input.channels * m.input.height * m.input.width
        n_in = getattr(est, "n_features_in_", None)
        if n_in is not None and int(n_in) != width:
            raise ModelLoadError(
                f"{m.ref}: the estimator takes {n_in} features, the manifest's input "
                f"{m.input.channels} x {m.input.height} x {m.input.width} = {width}"
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
        out = self.run(self._probe_input(), explain=False)
        self._check_width(out.probabilities)

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
