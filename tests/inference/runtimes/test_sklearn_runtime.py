"""scikit-learn runtime: skops packages load only scikit-learn, NumPy and SciPy types, give the
estimator's own probabilities, are never explainable, and pickles are refused at import."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from clearscan.imaging import decode
from clearscan.inference.manifest import load_manifest
from clearscan.inference.preprocess import preprocess
from clearscan.inference.runtimes import create_model
from clearscan.inference.runtimes.sklearn import SklearnModel
from clearscan.inference.types import ModelLoadError
from clearscan.registry.store import ImportRejected, ModelStore
from tests.conftest import chest_like, png_bytes

# Everything the untrusted code below does is recorded here; a refused load must leave it empty.
SPY_EVENTS: list[str] = []


def _spy_func(x):
    SPY_EVENTS.append("func called")
    return x


class SpyTransformer(TransformerMixin, BaseEstimator):
    def __new__(cls, *args, **kwargs):
        SPY_EVENTS.append("class constructed")
        return super().__new__(cls)

    def __init__(self, factor: float = 1.0) -> None:
        SPY_EVENTS.append("class init")
        self.factor = factor

    def __setstate__(self, state):
        SPY_EVENTS.append("class setstate")
        super().__setstate__(state)

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        SPY_EVENTS.append("class transform")
        return x * self.factor


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(n: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, width), dtype=np.float32)


def _fit(est, width: int = 64, n_classes: int = 2, n: int = 60, seed: int = 0):
    x = _rows(n, width, seed)
    # labels depend on the data, so the probabilities differ from row to row
    y = (x[:, :4].sum(axis=1) * 10).astype(int) % n_classes
    y[:n_classes] = np.arange(n_classes)  # every class present
    return est.fit(x, y)


def write_package(
    pkg: Path,
    est=None,
    *,
    name: str = "sk-demo",
    version: str = "1.0.0",
    labels: list[str] | None = None,
    shape: tuple[int, int, int] = (1, 8, 8),
    weights_bytes: bytes | None = None,
    extra: dict[str, bytes] | None = None,
    threshold: dict | None = None,
) -> Path:
    """A runtime=sklearn package folder: model.skops (skops.io.dump of `est`, or raw bytes),
    manifest.json listing every file's sha256."""
    pkg.mkdir(parents=True, exist_ok=True)
    weights = pkg / "model.skops"
    if weights_bytes is not None:
        weights.write_bytes(weights_bytes)
    else:
        sio.dump(est, weights)
    files = {"model.skops": _sha256(weights)}
    for fname, data in (extra or {}).items():
        (pkg / fname).parent.mkdir(parents=True, exist_ok=True)
        (pkg / fname).write_bytes(data)
        if "/" not in fname:
            files[fname] = _sha256(pkg / fname)
    c, h, w = shape
    manifest = {
        "name": name,
        "version": version,
        "runtime": "sklearn",
        "weights": "model.skops",
        "labels": labels or ["normal", "abnormal"],
        "input": {"channels": c, "height": h, "width": w},
        "explain": {"method": "none"},
        "output": {"kind": "probabilities"},
        "files": files,
    }
    if threshold is not None:
        manifest["threshold"] = threshold
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    return pkg


def _load(pkg: Path) -> SklearnModel:
    model = create_model(pkg, load_manifest(pkg))
    assert isinstance(model, SklearnModel)
    model.load()
    return model


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# --- loading and running ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: LogisticRegression(max_iter=500),
        lambda: RandomForestClassifier(n_estimators=10, random_state=0),
        lambda: Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))]),
    ],
    ids=["logreg", "forest", "pipeline"],
)
def test_probabilities_are_the_estimators_own(tmp_path, make):
    est = _fit(make())
    pkg = write_package(tmp_path / "pkg", est)
    model = _load(pkg)
    assert model.runtime == "sklearn"
    assert model.explainable is False and model.cam_error

    batch = _rows(6, 64, seed=7).reshape(6, 1, 8, 8)
    want = est.predict_proba(batch.reshape(6, -1))
    assert not np.allclose(want[0], want[1:])  # the rows really differ
    out = model.run(batch, explain=False)
    assert out.probabilities.shape == (6, 2)
    np.testing.assert_allclose(out.probabilities, want, atol=1e-6)
    np.testing.assert_array_equal(out.top, want.argmax(axis=1))
    assert out.cams is None

    explained = model.run(batch, explain=True)
    assert explained.cams is None
    np.testing.assert_allclose(explained.probabilities, want, atol=1e-6)

    items = model.batcher().predict(list(batch), explain=True)
    for item, row in zip(items, want, strict=True):
        np.testing.assert_allclose(item.probabilities, row, atol=1e-6)
        assert item.top == int(row.argmax()) and item.cam is None
    model.close()


def test_class_constructed_directly_and_three_channels(tmp_path):
    est = _fit(LogisticRegression(max_iter=500), width=3 * 4 * 5, n_classes=3)
    pkg = write_package(tmp_path / "pkg", est, labels=["a", "b", "c"], shape=(3, 4, 5))
    model = SklearnModel(pkg, load_manifest(pkg))
    model.load()
    batch = _rows(4, 60, seed=3).reshape(4, 3, 4, 5)
    out = model.run(batch, explain=True)
    np.testing.assert_allclose(
        out.probabilities, est.predict_proba(batch.reshape(4, -1)), atol=1e-6
    )
    assert out.cams is None and model.explainable is False
    model.close()
    with pytest.raises(ModelLoadError):
        model.run(batch, explain=False)


def test_threshold_is_applied_to_the_top_label(tmp_path):
    est = _fit(LogisticRegression(max_iter=500))
    batch = _rows(40, 64, seed=11).reshape(40, 1, 8, 8)
    probs = est.predict_proba(batch.reshape(40, -1))
    cut = float(np.median(probs[:, 1]))
    pkg = write_package(
        tmp_path / "pkg", est, threshold={"label": "abnormal", "value": round(cut, 6)}
    )
    out = _load(pkg).run(batch, explain=False)
    np.testing.assert_array_equal(out.top, (out.probabilities[:, 1] >= round(cut, 6)).astype(int))


def test_cuda_device_refused(tmp_path):
    pkg = write_package(tmp_path / "pkg", _fit(LogisticRegression()))
    model = create_model(pkg, load_manifest(pkg), device="cuda")
    with pytest.raises(ModelLoadError, match="CPU"):
        model.load()


# --- refusals -----------------------------------------------------------------------------------


def test_feature_count_must_match_the_input(tmp_path):
    est = _fit(LogisticRegression(), width=64)
    pkg = write_package(tmp_path / "pkg", est, shape=(1, 8, 9))
    with pytest.raises(ModelLoadError) as e:
        _load(pkg)
    msg = str(e.value)
    assert "64" in msg and "72" in msg and "sk-demo:1.0.0" in msg


def test_labels_must_match_the_classes(tmp_path):
    est = _fit(LogisticRegression(max_iter=500), n_classes=3)
    pkg = write_package(tmp_path / "pkg", est, labels=["normal", "abnormal"])
    with pytest.raises(ModelLoadError, match="labels") as e:
        _load(pkg)
    assert "3" in str(e.value) and "2" in str(e.value)


@pytest.mark.parametrize("make", [lambda: LinearSVC(), lambda: SVC()], ids=["linearsvc", "svc"])
def test_estimator_without_predict_proba_refused(tmp_path, make):
    est = _fit(make())
    assert not hasattr(est, "predict_proba")
    pkg = write_package(tmp_path / "pkg", est)
    with pytest.raises(ModelLoadError, match="predict_proba"):
        _load(pkg)


def _untrusted_function_pipeline():
    return Pipeline(
        [("spy", FunctionTransformer(func=_spy_func)), ("lr", LogisticRegression(max_iter=500))]
    )


def _untrusted_class_pipeline():
    return Pipeline([("spy", SpyTransformer()), ("lr", LogisticRegression(max_iter=500))])


@pytest.mark.parametrize(
    ("make", "refused"),
    [
        (_untrusted_function_pipeline, _spy_func),
        (_untrusted_class_pipeline, SpyTransformer),
    ],
    ids=["function", "class"],
)
def test_types_outside_sklearn_numpy_scipy_refused_before_construction(tmp_path, make, refused):
    est = _fit(make())
    pkg = write_package(tmp_path / "pkg", est)
    type_name = f"{refused.__module__}.{refused.__qualname__}"
    assert type_name in sio.get_untrusted_types(file=pkg / "model.skops")

    SPY_EVENTS.clear()
    with pytest.raises(ModelLoadError) as e:
        _load(pkg)
    assert type_name in str(e.value) and "refused" in str(e.value)
    assert SPY_EVENTS == []  # nothing from the package was constructed or called

    with pytest.raises(ImportRejected, match=refused.__qualname__):
        ModelStore(tmp_path / "store").import_package(pkg)
    assert SPY_EVENTS == []
    assert _files_under(tmp_path / "store") == []

    # control: loading the same file while trusting the type does run the package's code
    loaded = sio.load(
        pkg / "model.skops", trusted=sio.get_untrusted_types(file=pkg / "model.skops")
    )
    loaded.predict_proba(_rows(1, 64))
    assert SPY_EVENTS


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(5).bytes(4096),
        b"PK\x03\x04" + np.random.default_rng(6).bytes(512),
        b"",
    ],
    ids=["random", "zip-magic", "empty"],
)
def test_file_that_is_not_skops_refused(tmp_path, data):
    pkg = write_package(tmp_path / "pkg", weights_bytes=data)
    with pytest.raises(ModelLoadError, match="skops"):
        _load(pkg)


def test_truncated_skops_refused(tmp_path):
    good = write_package(tmp_path / "good", _fit(LogisticRegression()))
    raw = (good / "model.skops").read_bytes()
    pkg = write_package(tmp_path / "pkg", weights_bytes=raw[: len(raw) // 2])
    with pytest.raises(ModelLoadError, match="skops"):
        _load(pkg)


def test_changed_weights_fail_the_sha256_check(tmp_path):
    pkg = write_package(tmp_path / "pkg", _fit(LogisticRegression()))
    sio.dump(_fit(LogisticRegression(C=0.01), seed=3), pkg / "model.skops")
    with pytest.raises(ModelLoadError, match="sha256"):
        _load(pkg)


# --- store import -------------------------------------------------------------------------------


def test_store_imports_an_sklearn_package(tmp_path):
    est = _fit(LogisticRegression(max_iter=500))
    pkg = write_package(tmp_path / "pkg", est, version="2.1.0")
    store = ModelStore(tmp_path / "store")
    manifest = store.import_package(pkg)
    assert (manifest.name, manifest.version, manifest.runtime) == ("sk-demo", "2.1.0", "sklearn")
    final = store.version_dir("sk-demo", "2.1.0")
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json", "model.skops"]
    assert [p.name for p in store.root.iterdir()] == ["sk-demo"]  # no staging left
    batch = _rows(3, 64, seed=2).reshape(3, 1, 8, 8)
    out = _load(final).run(batch, explain=False)
    np.testing.assert_allclose(
        out.probabilities, est.predict_proba(batch.reshape(3, -1)), atol=1e-6
    )


_PICKLE = pickle.dumps({"weights": [1.0, 2.0]}, protocol=4)
assert _PICKLE[:2] == b"\x80\x04"


@pytest.mark.parametrize(
    "extra",
    [
        {"model.pkl": b"not even a pickle"},
        {"weights.joblib": b"anything"},
        {"backup.pickle": b"anything"},
        {"notes.txt": _PICKLE},
        {"calibration.bin": pickle.dumps([1, 2], protocol=2)},
        {"sub/data.bin": pickle.dumps([1, 2], protocol=5)},
    ],
    ids=["pkl", "joblib", "pickle-suffix", "pickle-bytes-txt", "protocol2", "in-subfolder"],
)
def test_store_refuses_pickles_in_folders_and_leaves_nothing(tmp_path, extra):
    pkg = write_package(tmp_path / "pkg", _fit(LogisticRegression()), extra=extra)
    root = tmp_path / "store"
    with pytest.raises(ImportRejected, match="pickle"):
        ModelStore(root).import_package(pkg)
    assert _files_under(root) == []
    assert not any(p.name.startswith(".incoming") for p in root.iterdir())


def test_store_refuses_pickle_weights(tmp_path):
    pkg = write_package(tmp_path / "pkg", weights_bytes=_PICKLE)
    root = tmp_path / "store"
    with pytest.raises(ImportRejected, match="pickle"):
        ModelStore(root).import_package(pkg)
    assert _files_under(root) == []


def _zip_of(pkg: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(pkg.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(pkg).as_posix())
    return buf.getvalue()


@pytest.mark.parametrize(
    "extra", [{"model.pkl": _PICKLE}, {"extra.dat": _PICKLE}, {"x.joblib": b"z"}]
)
def test_store_refuses_pickles_in_zips_and_leaves_nothing(tmp_path, extra):
    pkg = write_package(tmp_path / "pkg", _fit(LogisticRegression()), extra=extra)
    archive = tmp_path / "pkg.zip"
    archive.write_bytes(_zip_of(pkg))
    root = tmp_path / "store"
    with pytest.raises(ImportRejected, match="pickle"):
        ModelStore(root).import_package(archive)
    assert _files_under(root) == []


def test_store_refuses_bare_pickle_file(tmp_path):
    bare = tmp_path / "model.skops"  # a pickle under an innocent name
    bare.write_bytes(_PICKLE)
    root = tmp_path / "store"
    with pytest.raises(ImportRejected, match="pickle"):
        ModelStore(root).import_package(bare)
    assert _files_under(root) == []


@pytest.mark.parametrize("problem", ["features", "labels", "no-proba", "not-skops"])
def test_store_rejects_packages_that_cannot_load(tmp_path, problem):
    if problem == "features":
        pkg = write_package(tmp_path / "pkg", _fit(LogisticRegression()), shape=(1, 9, 9))
    elif problem == "labels":
        pkg = write_package(tmp_path / "pkg", _fit(LogisticRegression(), n_classes=3))
    elif problem == "no-proba":
        pkg = write_package(tmp_path / "pkg", _fit(LinearSVC()))
    else:
        pkg = write_package(tmp_path / "pkg", weights_bytes=b"\x00" * 100)
    root = tmp_path / "store"
    with pytest.raises(ImportRejected):
        ModelStore(root).import_package(pkg)
    assert _files_under(root) == []


# --- through the API ----------------------------------------------------------------------------


def test_upload_and_predict_through_the_api(client, admin_headers, clinician_headers, tmp_path):
    est = _fit(LogisticRegression(max_iter=1000), width=784, n=80)
    pkg = write_package(tmp_path / "pkg", est, name="sk-cxr", version="3.2.1", shape=(1, 28, 28))
    r = client.post(
        "/api/v1/models",
        headers=admin_headers,
        files={"file": ("sk.zip", _zip_of(pkg), "application/zip")},
    )
    assert r.status_code == 201, r.text
    assert r.json()["version"] == "3.2.1"
    assert r.json()["explainable"] is False

    arr = chest_like(64, seed=3)
    data = png_bytes(arr)
    r = client.post(
        "/api/v1/predict",
        headers=clinician_headers,
        files=[("file", ("x.png", data, "image/png"))],
        data={"model": "sk-cxr"},
    )
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["model"] == {"name": "sk-cxr", "version": "3.2.1"}
    assert p["labels"] == ["normal", "abnormal"]
    assert abs(sum(p["probabilities"]) - 1) < 1e-4
    assert p["heatmap_url"] is None
    assert p["top_label"] == p["labels"][int(np.argmax(p["probabilities"]))]

    # the same numbers as the estimator on the same preprocessed pixels
    manifest = load_manifest(pkg)
    tensor = preprocess(decode(data).pixels, manifest.input).tensor
    want = est.predict_proba(tensor.reshape(1, -1))[0]
    np.testing.assert_allclose(p["probabilities"], want, atol=1e-5)

    # the default model is untouched
    r = client.post(
        "/api/v1/predict", headers=clinician_headers, files=[("file", ("x.png", data, "image/png"))]
    )
    assert r.json()["predictions"][0]["model"]["name"] == "pneumonia-cxr"


def test_upload_of_pickle_package_rejected_through_the_api(client, admin_headers, tmp_path, app):
    pkg = write_package(tmp_path / "pkg", _fit(LogisticRegression()), extra={"model.pkl": _PICKLE})
    r = client.post(
        "/api/v1/models",
        headers=admin_headers,
        files={"file": ("sk.zip", _zip_of(pkg), "application/zip")},
    )
    assert r.status_code == 422 and "pickle" in r.json()["detail"]
    assert _files_under(app.state.clearscan.store.root) == []


# --- known gap: the sklearn./numpy./scipy. prefixes trust callables, not only estimator types ----


def _crafted_call(module: str, func: str, args: list) -> bytes:
    """A skops file whose top node calls `module.func(*args)` while loading (skops'
    ConstructorFromReduceNode calls the named "type" with the stored arguments)."""

    def js(value, i: int) -> dict:
        return {
            "__class__": "str",
            "__module__": "builtins",
            "__loader__": "JsonNode",
            "content": json.dumps(value),
            "is_json": True,
            "__id__": i,
        }

    schema = {
        "__class__": func,
        "__module__": module,
        "__loader__": "ConstructorFromReduceNode",
        "content": {
            "__class__": "tuple",
            "__module__": "builtins",
            "__loader__": "TupleNode",
            "content": [js(a, 10 + i) for i, a in enumerate(args)],
            "__id__": 2,
        },
        "__id__": 1,
        "protocol": 2,
        "_skops_version": sio.__dict__.get("__version__", "0.16.0"),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("schema.json", json.dumps(schema))
    return buf.getvalue()


def test_trusted_prefix_functions_cannot_run_on_load(tmp_path):
    """skops calls what it rebuilds with arguments from the file: numpy.save must be refused
    although it lives in NumPy (only classes of a vetted kind are trusted)."""
    marker = tmp_path / "written-while-loading.npy"
    data = _crafted_call("numpy", "save", [str(marker), [1, 2, 3]])
    pkg = write_package(tmp_path / "pkg", weights_bytes=data)
    with pytest.raises(ImportRejected):
        ModelStore(tmp_path / "store").import_package(pkg)
    assert not marker.exists()
    with pytest.raises(ModelLoadError):
        _load(pkg)
    assert not marker.exists()


def test_testing_helpers_and_memmap_are_never_trusted():
    from clearscan.inference.runtimes.sklearn import trusted_type

    assert trusted_type("sklearn.linear_model._logistic.LogisticRegression")
    assert trusted_type("sklearn.tree._tree.Tree")
    assert trusted_type("numpy.dtype")
    assert not trusted_type("numpy.save")
    assert not trusted_type("numpy.memmap")
    assert not trusted_type("sklearn.utils._testing.assert_run_python_script_without_output")
    assert not trusted_type("builtins.eval")
    assert not trusted_type("sklearn.no_such_module.Thing")


def test_string_classes_must_match_labels_in_order(tmp_path):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.random((40, 64))
    y = np.array(["normal", "pneumonia"] * 20)
    est = LogisticRegression().fit(x, y)
    pkg = write_package(tmp_path / "pkg", est, labels=["pneumonia", "normal"])
    with pytest.raises(ModelLoadError, match="classes_"):
        _load(pkg)
