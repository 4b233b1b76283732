"""The `Model` base: a loaded model version, whatever its runtime (verified files, warmed up, one
micro-batcher per explanation method), and how many runs of one version may go at once."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from clearscan.inference.batching import MicroBatcher
from clearscan.inference.manifest import ModelManifest, verify_files
from clearscan.inference.ood import OodReference
from clearscan.inference.types import EXPLAIN_METHODS, BatchOutput, ModelLoadError

log = logging.getLogger(__name__)

__all__ = ["Model", "auto_parallel_runs", "cpu_cores"]


class Model:
    """A loaded model version, whatever its runtime: verified files, warmed up, one micro-batcher
    per explanation method. Subclasses implement `_load` and `run`."""

    runtime = ""

    def __init__(
        self,
        package_dir: Path,
        manifest: ModelManifest,
        *,
        threads: int = 0,
        device: str = "cpu",
        parallel_runs: int = 1,
    ) -> None:
        self.package_dir = package_dir
        self.manifest = manifest
        self.threads = threads
        self.device = device
        self.parallel_runs = max(1, parallel_runs)  # a wish: other runtimes run one at a time
        self.cam_error: str | None = None
        self.ood: OodReference | None = None
        self._batchers: dict[str, MicroBatcher] = {}
        self._batchers_lock = threading.Lock()
        self._closed = False

    @property
    def explainable(self) -> bool:
        raise NotImplementedError

    @property
    def memory_bytes(self) -> int:
        """What this version counts against CLEARSCAN_MODEL_CACHE_MB: the size of its weights
        file (a close lower bound of what the runtime holds; activations come on top)."""
        try:
            return (self.package_dir / self.manifest.weights).stat().st_size
        except OSError:
            return 0

    @property
    def batch_workers(self) -> int:
        """How many batches of this version may run at once (the batchers' worker threads)."""
        return 1

    def load(self) -> None:
        try:
            verify_files(self.package_dir, self.manifest)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        try:
            self._load()
        except ModelLoadError:
            raise
        except Exception as exc:  # whatever a foreign model does at load, it never escapes raw
            log.exception("%s: unexpected error while loading", self.manifest.ref)
            raise ModelLoadError(
                f"{self.manifest.ref}: cannot load: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300] if str(exc) else ''}"
            ) from exc

    def _load(self) -> None:
        raise NotImplementedError

    def run(self, batch: np.ndarray, *, explain: bool, method: str = "gradcam") -> BatchOutput:
        raise NotImplementedError

    def batcher(self, method: str = "gradcam") -> MicroBatcher:
        """The micro-batcher of this version for `method` (created on first use)."""
        if method not in EXPLAIN_METHODS:
            raise ValueError(f"unknown explanation method {method!r}")
        with self._batchers_lock:
            if self._closed:
                raise ModelLoadError(f"{self.manifest.ref} was unloaded")
            b = self._batchers.get(method)
            if b is None:
                spec = self.manifest.batching

                def run(batch: np.ndarray, *, explain: bool) -> BatchOutput:
                    return self.run(batch, explain=explain, method=method)

                b = MicroBatcher(
                    run,
                    max_batch_size=spec.max_batch_size,
                    max_delay_ms=spec.max_delay_ms,
                    name=f"{self.manifest.ref}/{method}",
                    workers=self.batch_workers,
                )
                self._batchers[method] = b
            return b

    def close(self) -> None:
        """Finish the work already queued, stop the batcher threads, drop the runtime."""
        with self._batchers_lock:
            self._closed = True
            batchers = list(self._batchers.values())
            self._batchers.clear()
        for b in batchers:
            b.close()
        self._release()

    def _release(self) -> None:
        """Drop the runtime's session (subclasses)."""

    def _read_ood(self, features: int) -> OodReference:
        """The package's out-of-domain reference, checked against the activation's channels."""
        m = self.manifest
        assert m.ood is not None
        try:
            ref = OodReference.load(self.package_dir / m.ood.file)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{m.ref}: ood.file {m.ood.file}: {exc}") from None
        if ref.mean.size != features:
            raise ModelLoadError(
                f"{m.ref}: ood reference has {ref.mean.size} features, the "
                f"target activation {features}"
            )
        return ref

    def _decide(self, probs: np.ndarray) -> np.ndarray:
        th = self.manifest.threshold
        top = probs.argmax(axis=1)
        if th is None or th.folded_into_bias:
            return top
        idx = self.manifest.labels.index(th.label)
        rest = probs.copy()
        rest[:, idx] = -1.0
        return np.where(probs[:, idx] >= th.value, idx, rest.argmax(axis=1))

    def _probe_input(self) -> np.ndarray:
        m = self.manifest
        rng = np.random.default_rng(0)
        return rng.random((1, m.image.channels, m.image.height, m.image.width), dtype=np.float32)

    @property
    def segments(self) -> bool:
        """Whether this version outputs per-pixel class scores (task: segmentation)."""
        return self.manifest.task == "segmentation"

    def _segmentation_output(self, scores: np.ndarray, run_ms: float) -> BatchOutput:
        """A segmentation's N x C x H x W scores as a batch output: `maps` holds the class
        probabilities, `probabilities` each class's share of the image, `top` the most present
        class other than the background."""
        maps = softmax_channels(scores) if self.manifest.output.kind == "logits" else scores
        maps = maps.astype(np.float32, copy=False)
        share = maps.mean(axis=(2, 3))
        top = share[:, 1:].argmax(axis=1) + 1
        return BatchOutput(probabilities=share, top=top, cams=None, run_ms=run_ms, maps=maps)

    def _check_width(self, scores: np.ndarray) -> None:
        m = self.manifest
        if self.segments:
            if scores.ndim != 4 or scores.shape[:2] != (1, len(m.labels)):
                raise ModelLoadError(
                    f"{m.ref}: a segmentation with {len(m.labels)} labels outputs "
                    f"[N, {len(m.labels)}, H, W]; this model outputs {list(scores.shape)}"
                )
            return
        if scores.shape != (1, len(m.labels)):
            raise ModelLoadError(
                f"{m.ref}: labels has {len(m.labels)} entries but the model outputs shape "
                f"{list(scores.shape)}"
            )


def softmax_channels(x: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 (the classes) of N x C x H x W scores, numerically stable."""
    z = x - x.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def cpu_cores() -> int:
    """CPUs this process may run on (its affinity mask; containers and taskset included)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def auto_parallel_runs(device: str) -> int:
    """CLEARSCAN_PARALLEL_RUNS=0: two parallel runs per model version on a CPU with two or more
    cores (measured on 2 cores: +4-7 % req/s under 8 clients, same single-request latency), one
    on a GPU (there the micro-batcher's larger batches pay instead)."""
    return 2 if device == "cpu" and cpu_cores() >= 2 else 1
