"""TorchScript runtime (PyTorch), for models ONNX cannot express.

Only `torch.jit.load` is used: a TorchScript archive is read by TorchScript's own restricted
unpickler, never by Python's pickle, and `torch.load` checkpoints are refused at import.

Grad-CAM splits the forward graph at the target activation (`explain.torch_split`): an explained
batch costs one forward pass plus the backward of the head alone."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from clearscan.inference.base import Model
from clearscan.inference.explain.torch_split import GraphSplit, explained_run, find_split
from clearscan.inference.types import BatchOutput, CamUnsupported, ModelLoadError, softmax

log = logging.getLogger(__name__)

__all__ = ["TorchScriptModel"]


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # torch is an optional extra of the server
        raise ModelLoadError(
            "TorchScript models need PyTorch: pip install 'clearscan[torch]'"
        ) from None
    return torch


class TorchScriptModel(Model):
    runtime = "torchscript"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._module: Any = None
        self._split: GraphSplit | None = None
        self._torch_device: Any = None

    @property
    def explainable(self) -> bool:
        return self._split is not None

    @property
    def target(self) -> str | None:
        return self._split.target if self._split else None

    def _release(self) -> None:
        self._module = None
        self._split = None

    def _load(self) -> None:
        torch = _torch()
        m = self.manifest
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("CLEARSCAN_DEVICE=cuda but PyTorch sees no CUDA device")
        self._torch_device = torch.device(self.device)
        try:
            module = torch.jit.load(
                str(self.package_dir / m.weights), map_location=self._torch_device
            )
        except Exception as exc:  # not a TorchScript archive, truncated, unknown operators
            raise ModelLoadError(
                f"{m.ref}: {m.weights} is not a loadable TorchScript archive: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from None
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self._module = module
        if self.segments:
            self.cam_error = "explanations of segmentations are not available"
        elif m.explain.method == "gradcam":
            x = torch.from_numpy(self._probe_input()).to(self._torch_device)
            try:
                self._split = find_split(module, x, m.explain.target)
            except CamUnsupported as exc:
                self.cam_error = str(exc)
            except RuntimeError as exc:  # a graph TorchScript cannot split
                self.cam_error = f"cannot split the graph at the target: {exc}"
        self._self_test()

    def _self_test(self) -> None:
        m = self.manifest
        x = self._probe_input()
        out = self.run(x, explain=False)
        self._check_width(out.maps if out.maps is not None else out.probabilities)
        if self._split is not None:
            torch = _torch()
            xt = torch.from_numpy(x).to(self._torch_device)
            with torch.no_grad():
                act = self._split.body(xt)
                full = self._module(xt)
                split = self._split.head(xt, act.clone())
            if not torch.allclose(full, split, atol=1e-4, rtol=1e-4):
                self.cam_error = "the graph split at the target does not reproduce forward()"
                self._split = None
            else:
                try:
                    self.run(x, explain=True)
                except Exception as exc:  # a head autograd cannot differentiate as split
                    self.cam_error = f"explained run failed: {str(exc).splitlines()[0][:200]}"
                    self._split = None
            if self._split is not None and m.ood is not None:
                self.ood = self._read_ood(int(act.shape[1]))
        if self._split is None and m.ood is not None:
            log.warning("%s: out-of-domain reference ignored: no target activation", m.ref)
        for _ in range(2):
            self.run(x, explain=self._split is not None)

    def run(self, batch: np.ndarray, *, explain: bool, method: str = "gradcam") -> BatchOutput:
        if self._module is None:
            raise ModelLoadError(f"{self.manifest.ref} is not loaded")
        torch = _torch()
        t0 = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._torch_device)
        split = self._split
        cams = ood = None
        if self.segments:
            with torch.inference_mode():
                raw = self._module(x).float().cpu().numpy()
            if raw.ndim != 4:
                raise ModelLoadError(
                    f"{self.manifest.ref}: a segmentation outputs [N, C, H, W], not "
                    f"{list(raw.shape)}"
                )
            return self._segmentation_output(raw, (time.perf_counter() - t0) * 1000)
        if split is None or not (explain or self.ood is not None):
            with torch.inference_mode():
                scores = self._module(x)
            probs, top = self._scores(scores.float().cpu().numpy())
        else:
            if explain:
                probs, top, cams, a = explained_run(split, x, method, self._scores)
            else:
                with torch.no_grad():
                    act = split.body(x)
                    scores = split.head(x, act.clone())
                probs, top = self._scores(scores.float().cpu().numpy())
                a = act.float().cpu().numpy()
            if self.ood is not None:
                ood = self.ood.scores(a, batch)
        run_ms = (time.perf_counter() - t0) * 1000
        return BatchOutput(probabilities=probs, top=top, cams=cams, run_ms=run_ms, ood_scores=ood)

    def _scores(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = softmax(scores) if self.manifest.output.kind == "logits" else scores
        return probs, self._decide(probs)
