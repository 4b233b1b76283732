"""The LRU model cache: loaded versions stay within a memory cap, least recently used unload
first, a version in use is never unloaded, unloading stops its batchers, concurrent requests for
a cold version load it once, and a version corrupted while unloaded falls back to another."""

from __future__ import annotations

import json
import shutil
import stat
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from clearscan.config import ConfigError, Settings
from clearscan.inference.base import Model
from clearscan.inference.manifest import load_manifest
from clearscan.inference.runtimes import create_model
from clearscan.inference.types import ModelLoadError
from clearscan.registry.cache import ModelCache
from clearscan.registry.catalog import BUNDLED_DIR, ModelEntry
from clearscan.registry.errors import ModelUnavailable
from clearscan.registry.routing import ModelRegistry

BUNDLED = BUNDLED_DIR / "pneumonia-cxr"
WEIGHTS = (BUNDLED / "model.onnx").stat().st_size
NAMES = ["m0", "m1", "m2", "m3"]


def _package(root: Path, name: str, version: str = "1.0.0") -> Path:
    dst = root / f"{name}-{version}"
    shutil.copytree(BUNDLED, dst)
    for p in dst.iterdir():
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    m = json.loads((dst / "manifest.json").read_text())
    m.update(name=name, version=version)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _registry(tmp_path: Path, capacity: float, names=NAMES) -> tuple[ModelRegistry, ModelCache]:
    root = tmp_path / "models"
    root.mkdir(exist_ok=True)
    for n in names:
        _package(root, n)
    cache = ModelCache(capacity_bytes=int(capacity * WEIGHTS))
    reg = ModelRegistry([root], cache=cache)
    reg.load_all()
    return reg, cache


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 28, 28), dtype=np.float32)


def _entry(reg: ModelRegistry, name: str) -> ModelEntry:
    return reg.version(name, "1.0.0")


def _loaded(reg: ModelRegistry, cache: ModelCache) -> list[str]:
    """Names of the loaded versions, least recently used first."""
    by_key = {_entry(reg, n).key: n for n in reg.names()}
    loaded = cache.keys()  # a method of ModelCache (a list), not a dict view
    return [by_key[k] for k in loaded]


def _use(reg: ModelRegistry, name: str, *, explain: bool = False) -> np.ndarray:
    with reg.serve(name, "case-1") as (entry, model):
        assert entry.manifest.name == name
        out = model.batcher().predict([_x()], explain=explain)[0]
    assert out.probabilities.shape == (2,)
    return out.probabilities


def _wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_weights_size_is_what_a_version_counts(tmp_path):
    reg, cache = _registry(tmp_path, 10, names=["m0"])
    model = _entry(reg, "m0").model
    assert model is not None and model.memory_bytes == WEIGHTS > 500_000
    assert cache.used_bytes == WEIGHTS


def test_lru_within_cap_and_cold_versions_reload(tmp_path):
    reg, cache = _registry(tmp_path, 2.5)
    # every version was loaded once at start-up, but only two fit: the last two stay
    assert cache.loads == 4
    assert _loaded(reg, cache) == ["m2", "m3"]
    assert cache.used_bytes <= cache.capacity_bytes
    for n in NAMES:
        e = _entry(reg, n)
        assert e.available and e.verified and e.error is None
        assert (e.model is not None) == (n in ("m2", "m3"))
        assert reg.status(e) == "active"

    # a hit reorders: m2 is now the most recently used
    _use(reg, "m2")
    assert cache.loads == 4
    assert _loaded(reg, cache) == ["m3", "m2"]

    # a cold version loads again and the least recently used (m3, not m2) goes
    with reg.serve("m0", "k") as (entry, model):
        out = model.run(_x()[None], explain=True)
        assert out.cams is not None and out.probabilities.shape == (1, 2)
        assert entry.model is model
    assert cache.loads == 5
    assert _loaded(reg, cache) == ["m2", "m0"]
    assert _entry(reg, "m3").model is None and _entry(reg, "m3").available

    # through the batcher with explanations; m2 goes now
    with reg.serve("m1", "k") as (_, model):
        (item,) = model.batcher().predict([_x(1)], explain=True)
        assert item.cam is not None and abs(float(item.probabilities.sum()) - 1) < 1e-5
    assert cache.loads == 6
    assert _loaded(reg, cache) == ["m0", "m1"]
    assert cache.evictions == 4
    assert cache.used_bytes <= cache.capacity_bytes


def test_same_answers_after_a_reload(tmp_path):
    reg, cache = _registry(tmp_path, 1.5, names=["m0", "m1"])
    first = _use(reg, "m0")
    _use(reg, "m1")  # evicts m0
    assert _entry(reg, "m0").model is None
    loads = cache.loads
    again = _use(reg, "m0")
    assert cache.loads == loads + 1
    np.testing.assert_allclose(first, again, atol=1e-6)


def test_leased_version_is_never_evicted(tmp_path):
    reg, cache = _registry(tmp_path, 1.5)
    assert _loaded(reg, cache) == ["m3"]
    a = _entry(reg, "m0")
    with reg.lease(a) as model_a:
        assert a.model is model_a
        with reg.serve("m1", "k") as (_, model_b):
            # m0 is the least recently used, but in use: the cap is exceeded instead
            with reg.serve("m2", "k") as (_, model_c):
                assert _loaded(reg, cache) == ["m0", "m1", "m2"]
                assert cache.used_bytes > cache.capacity_bytes
                model_c.batcher().predict([_x()], explain=False)
            model_b.batcher().predict([_x()], explain=False)
            assert a.model is model_a and _entry(reg, "m2").model is None
        assert a.model is model_a
        assert _loaded(reg, cache) == ["m0"]
        with reg.serve("m3", "k") as (_, model_d):
            model_d.batcher().predict([_x()], explain=False)
        assert a.model is model_a
        (item,) = model_a.batcher().predict([_x()], explain=True)
        assert item.cam is not None
        assert not model_a._closed
    # released: within the cap again, and m0 can go when something else is needed
    assert cache.used_bytes <= cache.capacity_bytes
    _use(reg, "m1")
    assert a.model is None and model_a._closed
    assert _loaded(reg, cache) == ["m1"]


def test_nested_leases_of_one_version_count(tmp_path):
    reg, _ = _registry(tmp_path, 1.5, names=["m0", "m1"])
    a = _entry(reg, "m0")
    with reg.lease(a) as outer:
        with reg.lease(a) as inner:
            assert inner is outer
        _use(reg, "m1")  # one lease of m0 is still held
        assert a.model is outer
    _use(reg, "m1")
    assert a.model is None


def test_eviction_closes_the_model_and_stops_its_threads(tmp_path):
    reg, cache = _registry(tmp_path, 1.5, names=["m0", "m1"])
    baseline = threading.active_count()
    with reg.serve("m0", "k") as (_, model):
        plain = model.batcher()
        plus = model.batcher("gradcam++")
        plain.predict([_x()], explain=True)
        plus.predict([_x()], explain=True)
        threads = [*plain._threads, *plus._threads]
        assert all(t.is_alive() for t in threads)
        assert threading.active_count() >= baseline + 2
    assert model._batchers  # still loaded: the batchers stay
    evictions = cache.evictions

    with reg.serve("m1", "k") as (_, other):  # m0 is evicted
        assert _entry(reg, "m0").model is None
        other.run(_x()[None], explain=False)
    assert cache.evictions == evictions + 1
    assert model._batchers == {}
    assert plain.closed and plus.closed
    with pytest.raises(ModelLoadError, match="unloaded"):
        model.batcher()
    with pytest.raises(ModelLoadError):
        model.run(_x()[None], explain=False)
    with pytest.raises(RuntimeError):
        plain.submit(_x(), explain=False)
    assert _wait_for(lambda: not any(t.is_alive() for t in threads))
    assert _wait_for(lambda: threading.active_count() <= baseline)


def test_concurrent_serving_over_a_small_cap(tmp_path):
    reg, cache = _registry(tmp_path, 1.5)
    loads = cache.loads
    errors: list[BaseException] = []
    results: list[np.ndarray] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(tid: int) -> None:
        try:
            start.wait()
            for i in range(20):
                name = NAMES[(tid + i) % len(NAMES)]
                with reg.serve(name, f"case-{tid}-{i}") as (entry, model):
                    assert entry.manifest.name == name
                    (out,) = model.batcher().predict([_x(tid * 100 + i)], explain=i % 3 == 0)
                with lock:
                    results.append(out.probabilities)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(results) == 160
    for p in results:
        assert p.shape == (2,) and np.isfinite(p).all() and abs(float(p.sum()) - 1) < 1e-4
    assert cache.used_bytes <= cache.capacity_bytes
    assert len(cache.keys()) <= 1
    assert cache.loads > loads + 4  # versions were unloaded and loaded again
    assert all(_entry(reg, n).available for n in NAMES)


class _CountingLoader:
    def __init__(self, model: Model, delay: float) -> None:
        self.model = model
        self.delay = delay
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> Model:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        return self.model


def test_concurrent_requests_for_a_cold_version_load_it_once(tmp_path):
    pkg = _package(tmp_path, "m0")
    real = create_model(pkg, load_manifest(pkg))
    real.load()
    loader = _CountingLoader(real, delay=0.3)
    cache = ModelCache(capacity_bytes=10 * WEIGHTS)
    key = (pkg.resolve(), "sha")
    got: list[Model] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def request() -> None:
        try:
            barrier.wait()
            got.append(cache.acquire(key, loader))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert loader.calls == 1 and cache.loads == 1
    assert len(got) == 2 and got[0] is got[1] is real

    # both requests hold a lease: nothing is unloaded until both are released
    cache.release(key)
    cache.resize(0)
    assert cache.keys() == [key] and not real._closed
    cache.release(key)
    assert cache.keys() == [] and real._closed
    assert cache.evictions == 1


def test_failed_load_is_not_cached_and_can_be_retried(tmp_path):
    pkg = _package(tmp_path, "m0")
    cache = ModelCache(capacity_bytes=10 * WEIGHTS)
    key = (pkg.resolve(), "sha")

    def broken() -> Model:
        raise ModelLoadError("boom")

    with pytest.raises(ModelLoadError):
        cache.acquire(key, broken)
    assert cache.keys() == [] and cache.loads == 0
    real = create_model(pkg, load_manifest(pkg))
    real.load()
    with cache.lease(key, lambda: real) as model:
        assert model is real
    assert cache.loads == 1 and cache.keys() == [key]


def test_version_corrupted_while_unloaded_falls_back(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    _package(root, "dup", "1.0.0")
    newer = _package(root, "dup", "1.1.0")
    _package(root, "other", "1.0.0")
    cache = ModelCache(capacity_bytes=int(1.5 * WEIGHTS))
    reg = ModelRegistry([root], cache=cache)
    reg.load_all()
    serving = reg.get("dup")
    assert serving.manifest.version == "1.1.0"  # no DB: the highest version serves
    assert serving.available
    _use(reg, "other")  # dup:1.1.0 is evicted
    assert serving.model is None and serving.available

    weights = newer / "model.onnx"
    weights.chmod(weights.stat().st_mode | stat.S_IWUSR)
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))

    with reg.serve("dup", "case-9") as (entry, model):
        assert entry.manifest.version == "1.0.0"
        (out,) = model.batcher().predict([_x()], explain=False)
        assert abs(float(out.probabilities.sum()) - 1) < 1e-5
    bad = reg.version("dup", "1.1.0")
    assert bad is serving
    assert not bad.available and "sha256" in (bad.error or "")
    assert reg.status(bad) == "unavailable"
    assert reg.get("dup").manifest.version == "1.0.0"
    assert reg.status(reg.version("dup", "1.0.0")) == "active"


def test_only_version_corrupted_while_unloaded_is_unavailable(tmp_path):
    reg, _ = _registry(tmp_path, 1.5, names=["m0", "m1"])
    assert _entry(reg, "m0").model is None
    weights = tmp_path / "models" / "m0-1.0.0" / "model.onnx"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ModelUnavailable, match="sha256"), reg.serve("m0", "k"):
        pass
    assert "sha256" in (_entry(reg, "m0").error or "")
    _use(reg, "m1")  # the others are unaffected


def test_model_cache_mb_setting(tmp_path, monkeypatch):
    from clearscan.bootstrap import build_registry

    monkeypatch.delenv("CLEARSCAN_MODEL_CACHE_MB", raising=False)
    assert Settings(data_dir=tmp_path).model_cache_mb == 4096
    monkeypatch.setenv("CLEARSCAN_MODEL_CACHE_MB", "12.5")
    assert Settings(data_dir=tmp_path).model_cache_mb == 12.5
    monkeypatch.delenv("CLEARSCAN_MODEL_CACHE_MB")
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, model_cache_mb=0)
    registry = build_registry(Settings(data_dir=tmp_path, model_cache_mb=1))
    assert registry.cache.capacity_bytes == 2**20
    assert registry.get("pneumonia-cxr").available
    assert registry.cache.used_bytes <= 2**20
    cache = ModelCache()
    registry = build_registry(Settings(data_dir=tmp_path, model_cache_mb=0.5), cache=cache)
    assert registry.cache is cache and cache.capacity_bytes == 2**19
    # the bundled model alone is larger than the cap: it stays loadable and serves
    with registry.serve("pneumonia-cxr", "k") as (_, model):
        model.batcher().predict([_x()], explain=False)
    assert cache.used_bytes == 0


def test_each_application_owns_its_cache(settings):
    """The application state builds the cache from the settings and the registry loads into
    it; a second application in the same process starts cold (nothing shared between them)."""
    from clearscan.app import create_app

    first = create_app(settings).state.clearscan
    assert first.model_cache is first.registry.cache
    assert first.model_cache.capacity_bytes == int(settings.model_cache_mb * 2**20)
    assert first.model_cache.loads == 1  # the default model, loaded and warmed at start-up
    second = create_app(settings.model_copy(update={"model_cache_mb": 2.0})).state.clearscan
    assert second.model_cache is not first.model_cache
    assert second.model_cache.capacity_bytes == 2 * 2**20
    assert second.model_cache.loads == 1  # loaded again: the first app's copy is not shared
    assert first.model_cache.capacity_bytes == int(settings.model_cache_mb * 2**20)


def test_cuda_device_without_provider_stops_start_up(tmp_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("ONNX Runtime has the CUDA execution provider here")
    from clearscan.app import create_app

    with pytest.raises(ConfigError, match="CUDAExecutionProvider"):
        create_app(Settings(data_dir=tmp_path, device="cuda"))
