"""ONNX Runtime: load (verify sha256s, locate the Grad-CAM head, warm up) and run batches that
return probabilities and, in the same run, Grad-CAM maps."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from clearscan.inference.base import Model, cpu_cores
from clearscan.inference.explain import head_maps
from clearscan.inference.explain.onnx_head import CamHead, expose_output, find_cam_head
from clearscan.inference.manifest import ModelManifest
from clearscan.inference.types import BatchOutput, CamUnsupported, ModelLoadError, softmax

log = logging.getLogger(__name__)

__all__ = ["PARALLEL_MAX_WEIGHTS_BYTES", "OnnxModel", "onnx_providers"]


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime execution providers for CLEARSCAN_DEVICE (cuda needs onnxruntime-gpu)."""
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelLoadError(
                "CLEARSCAN_DEVICE=cuda but ONNX Runtime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu on a machine with an NVIDIA GPU)"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


PARALLEL_MAX_WEIGHTS_BYTES = 512 * 2**20  # larger models keep one session (memory)


class OnnxModel(Model):
    """One ONNX Runtime session using every core (`threads`), which serves a batch that runs
    alone: the lowest latency for one request. With `parallel_runs` = N > 1 (CPU only, weights
    up to PARALLEL_MAX_WEIGHTS_BYTES) it also holds N lean sessions of cores / N threads each,
    and the batchers get N workers: a batch that starts while another runs takes a free lean
    session. Under load the batches then run side by side, each on its own cores, instead of
    one after another on all cores, where every parallel step waits for the slowest thread and
    the server's own Python threads preempt them. The cost is memory: N + 1 copies of the
    weights (counted in memory_bytes)."""

    runtime = "onnx"

    def __init__(self, package_dir: Path, manifest: ModelManifest, **kwargs: Any) -> None:
        super().__init__(package_dir, manifest, **kwargs)
        self.cam_head: CamHead | None = None
        self._session: ort.InferenceSession | None = None
        self._lean: list[ort.InferenceSession] = []
        self._free: list[ort.InferenceSession] = []  # lean sessions not running now
        self._inflight = 0
        self._run_lock = threading.Lock()
        self._outputs: list[str] = []

    @property
    def explainable(self) -> bool:
        return self.cam_head is not None

    @property
    def batch_workers(self) -> int:
        return max(1, len(self._lean))

    @property
    def memory_bytes(self) -> int:
        return super().memory_bytes * (1 + len(self._lean))

    def _release(self) -> None:
        self._session = None
        self._lean, self._free = [], []

    def _lean_sessions(self) -> int:
        """How many lean sessions to make (0: none)."""
        if self.parallel_runs < 2 or self.device != "cpu":
            return 0
        cores = self.threads or cpu_cores()
        if cores < 2 or super().memory_bytes > PARALLEL_MAX_WEIGHTS_BYTES:
            return 0
        return min(self.parallel_runs, cores)

    def _make_session(self, model: bytes, threads: int) -> ort.InferenceSession:
        m = self.manifest
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        # Idle ONNX Runtime threads would spin for work and take CPU from decoding, storage and
        # HTTP in the same process; let them sleep.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers = onnx_providers(self.device)
        try:
            return ort.InferenceSession(model, sess_options=opts, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"{m.ref}: ONNX Runtime cannot load {m.weights}: {exc}") from exc

    def _load(self) -> None:
        m = self.manifest
        try:
            proto = onnx.load_model(str(self.package_dir / m.weights))
        except Exception as exc:  # truncated or not ONNX at all
            raise ModelLoadError(
                f"{m.ref}: {m.weights} is not a readable ONNX model: {exc}"
            ) from exc
        if self.segments:
            self.cam_error = "explanations of segmentations are not available"
        elif m.explain.method == "gradcam":
            try:
                self.cam_head = find_cam_head(proto, m.explain.target)
                proto = expose_output(proto, self.cam_head.target)
            except CamUnsupported as exc:
                self.cam_error = str(exc)
        serialized = proto.SerializeToString()
        session = self._make_session(serialized, self.threads)
        self._check_io(session)
        self._load_ood()
        self._session = session
        self._outputs = [m.output.name] + ([self.cam_head.target] if self.cam_head else [])
        self._self_test()
        lean = self._lean_sessions()
        if lean:
            per = max(1, (self.threads or cpu_cores()) // lean)
            self._lean = [self._make_session(serialized, per) for _ in range(lean)]
            x = self._probe_input()
            for s in self._lean:  # warm-up, and the same answer as the main session
                for _ in range(2):
                    out = s.run(self._outputs[:1], {m.image.name: x})[0]
                ref = session.run(self._outputs[:1], {m.image.name: x})[0]
                if not np.allclose(out, ref, atol=1e-4, rtol=1e-4):
                    raise ModelLoadError(f"{m.ref}: lean sessions disagree with the main one")
            self._free = list(self._lean)

    def _load_ood(self) -> None:
        if self.manifest.ood is None:
            return
        if self.cam_head is None:
            log.warning(
                "%s: out-of-domain reference ignored: no GAP + linear head", self.manifest.ref
            )
            return
        self.ood = self._read_ood(self.cam_head.weight.shape[1])

    def _check_io(self, session: ort.InferenceSession) -> None:
        m = self.manifest
        inputs = {i.name: i for i in session.get_inputs()}
        if m.image.name not in inputs:
            raise ModelLoadError(
                f"{m.ref}: input.name {m.image.name!r} is not an input of the graph"
            )
        shape = inputs[m.image.name].shape
        want = [m.image.channels, m.image.height, m.image.width]
        if len(shape) != 4 or any(
            isinstance(s, int) and s != w for s, w in zip(shape[1:], want, strict=True)
        ):
            raise ModelLoadError(
                f"{m.ref}: graph input shape {shape} contradicts the manifest's input "
                f"[N, {want[0]}, {want[1]}, {want[2]}]"
            )
        if m.output.name not in {o.name for o in session.get_outputs()}:
            raise ModelLoadError(f"{m.ref}: output.name {m.output.name!r} is not a graph output")

    def _self_test(self) -> None:
        """Warm up, check the output width against the labels, and check that the located head
        really is GAP + linear (logits recomputed from the activation must match)."""
        m = self.manifest
        x = self._probe_input()
        assert self._session is not None
        outs = self._session.run(self._outputs, {m.image.name: x})
        self._check_width(outs[0])
        if self.cam_head is not None and m.output.kind == "logits":
            act = outs[1]
            recomputed = act.mean(axis=(2, 3)) @ self.cam_head.weight.T + self.cam_head.bias
            if act.ndim != 4 or not np.allclose(recomputed, outs[0], atol=1e-3, rtol=1e-3):
                self.cam_error = "graph head is not a plain GAP + linear layer"
                self.cam_head = None
                self._outputs = self._outputs[:1]
        for _ in range(3):
            self._session.run(self._outputs, {m.image.name: x})

    def run(self, batch: np.ndarray, *, explain: bool, method: str = "gradcam") -> BatchOutput:
        if self._session is None:
            raise ModelLoadError(f"{self.manifest.ref} is not loaded")
        m = self.manifest
        need_act = self.cam_head is not None and (explain or self.ood is not None)
        names = self._outputs if need_act else self._outputs[:1]
        t0 = time.perf_counter()
        with self._run_lock:  # alone: the all-cores session; beside another run: a lean one
            self._inflight += 1
            lean = self._free.pop() if self._inflight > 1 and self._free else None
        try:
            outs = (lean or self._session).run(names, {m.image.name: batch})
        finally:
            with self._run_lock:
                self._inflight -= 1
                if lean is not None:
                    self._free.append(lean)
        scores = outs[0].astype(np.float32, copy=False)
        if self.segments:
            return self._segmentation_output(scores, (time.perf_counter() - t0) * 1000)
        probs = softmax(scores) if m.output.kind == "logits" else scores
        top = self._decide(probs)
        cams = None
        if explain and self.cam_head is not None:
            cams = head_maps(method, outs[1], self.cam_head.weight, top)
        ood = self.ood.scores(outs[1], batch) if self.ood is not None and need_act else None
        run_ms = (time.perf_counter() - t0) * 1000
        return BatchOutput(probabilities=probs, top=top, cams=cams, run_ms=run_ms, ood_scores=ood)
