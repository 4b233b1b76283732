"""OnnxModel's parallel runs: a batch running alone uses the all-cores session; a batch that
starts while another runs takes one of the lean sessions; answers are the same either way."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from clearscan.inference import base
from clearscan.inference.base import auto_parallel_runs
from clearscan.inference.manifest import load_manifest
from clearscan.inference.runtimes import onnx as onnx_runtime
from clearscan.inference.runtimes.onnx import OnnxModel

BUNDLED = Path(__file__).resolve().parents[3] / "clearscan" / "bundled_models" / "pneumonia-cxr"
WAIT = 10.0


def _model(**kwargs: object) -> OnnxModel:
    m = OnnxModel(BUNDLED, load_manifest(BUNDLED), **kwargs)  # type: ignore[arg-type]
    m.load()
    return m


def _batch(n: int = 3, seed: int = 0) -> np.ndarray:
    spec = load_manifest(BUNDLED).image
    rng = np.random.default_rng(seed)
    return rng.random((n, spec.channels, spec.height, spec.width), dtype=np.float32)


class CountingRun:
    """Wraps one session's run: counts calls, and can hold them until released."""

    def __init__(self, session: object, *, hold: bool = False) -> None:
        self.inner = session.run  # type: ignore[attr-defined]
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(WAIT)
        return self.inner(*args, **kwargs)


def test_lean_sessions_made_counted_and_answering_the_same():
    one = _model(threads=2, parallel_runs=1)
    two = _model(threads=2, parallel_runs=2)
    try:
        assert one.batch_workers == 1 and not one._lean
        assert two.batch_workers == 2 and len(two._lean) == 2
        size = (BUNDLED / "model.onnx").stat().st_size
        assert one.memory_bytes == size and two.memory_bytes == 3 * size
        x = _batch()
        ref = one.run(x, explain=True)
        for lean in two._lean:  # each lean session, forced, gives the same answer
            out = lean.run(two._outputs, {two.manifest.image.name: x})
            main = one._session.run(one._outputs, {one.manifest.image.name: x})  # type: ignore[union-attr]
            for a, b in zip(out, main, strict=True):
                np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
        got = two.run(x, explain=True)
        np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-6)
        np.testing.assert_array_equal(got.top, ref.top)
        assert got.cams is not None and ref.cams is not None
        np.testing.assert_allclose(got.cams, ref.cams, atol=1e-5)
        assert len(two.batcher()._threads) == 2  # the batcher runs two batches at once
    finally:
        one.close()
        two.close()


def test_alone_uses_the_main_session_beside_another_run_a_lean_one():
    m = _model(threads=2, parallel_runs=2)
    try:
        assert m._session is not None
        main = CountingRun(m._session, hold=True)
        m._session.run = main  # type: ignore[method-assign]
        leans = [CountingRun(s) for s in m._lean]
        for s, wrapped in zip(m._lean, leans, strict=True):
            s.run = wrapped  # type: ignore[method-assign]
        x = _batch(1)
        first: dict[str, object] = {}
        t = threading.Thread(target=lambda: first.update(out=m.run(x, explain=False)))
        t.start()
        assert main.entered.wait(WAIT)  # alone: the all-cores session, held there
        second = m.run(x, explain=True)  # starts while the first runs: a lean session
        assert sum(w.calls for w in leans) == 1 and main.calls == 1
        assert second.cams is not None
        main.release.set()
        t.join(WAIT)
        assert "out" in first
        third = m.run(x, explain=False)  # alone again: the main session
        assert main.calls == 2 and sum(w.calls for w in leans) == 1
        np.testing.assert_allclose(third.probabilities, second.probabilities, atol=1e-6)
        assert m._inflight == 0 and len(m._free) == 2  # every lean session came back
    finally:
        m.close()


def test_concurrent_runs_all_answer_correctly():
    m = _model(threads=2, parallel_runs=2)
    ref = _model(threads=1, parallel_runs=1)
    try:
        xs = [_batch(2, seed=i) for i in range(6)]
        want = [ref.run(x, explain=True) for x in xs]
        errors: list[str] = []

        def client(k: int) -> None:
            for i in range(20):
                j = (k + i) % len(xs)
                out = m.run(xs[j], explain=True)
                if not np.allclose(out.probabilities, want[j].probabilities, atol=1e-5):
                    errors.append(f"client {k} run {i}: probabilities differ")
                if out.cams is None or not np.allclose(out.cams, want[j].cams, atol=1e-4):
                    errors.append(f"client {k} run {i}: maps differ")

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 3)
        assert not errors, errors[:3]
        assert m._inflight == 0 and len(m._free) == 2
    finally:
        m.close()
        ref.close()


def test_no_lean_sessions_on_a_gpu_for_big_weights_or_one_core(monkeypatch):
    manifest = load_manifest(BUNDLED)
    assert OnnxModel(BUNDLED, manifest, device="cuda", parallel_runs=2)._lean_sessions() == 0
    assert OnnxModel(BUNDLED, manifest, threads=1, parallel_runs=2)._lean_sessions() == 0
    assert OnnxModel(BUNDLED, manifest, threads=8, parallel_runs=2)._lean_sessions() == 2
    assert OnnxModel(BUNDLED, manifest, threads=2, parallel_runs=5)._lean_sessions() == 2
    monkeypatch.setattr(onnx_runtime, "PARALLEL_MAX_WEIGHTS_BYTES", 1000)
    assert OnnxModel(BUNDLED, manifest, threads=8, parallel_runs=2)._lean_sessions() == 0


@pytest.mark.parametrize(
    ("cores", "device", "want"), [(1, "cpu", 1), (2, "cpu", 2), (16, "cpu", 2), (16, "cuda", 1)]
)
def test_auto_parallel_runs(monkeypatch, cores, device, want):
    monkeypatch.setattr(base, "cpu_cores", lambda: cores)
    assert auto_parallel_runs(device) == want


def test_the_server_passes_the_setting_to_its_models(settings):
    from clearscan.app import create_app
    from clearscan.registry.cache import ModelCache
    from clearscan.registry.catalog import BUNDLED_DIR
    from clearscan.registry.routing import ModelRegistry

    app = create_app(settings.model_copy(update={"parallel_runs": 3}))
    assert app.state.clearscan.registry.parallel_runs == 3
    auto = create_app(settings.model_copy(update={"parallel_runs": 0})).state.clearscan.registry
    assert auto.parallel_runs == auto_parallel_runs("cpu")
    # the registry builds its versions with it (own cache: the app-wide one is shared)
    reg = ModelRegistry([BUNDLED_DIR], threads=3, parallel_runs=3, cache=ModelCache())
    reg.load_all()
    with reg.serve("pneumonia-cxr", "k") as (_, model):
        assert model.batch_workers == 3 and len(model.batcher()._threads) == 3
    reg.cache.clear()  # unload: stop its batcher threads
