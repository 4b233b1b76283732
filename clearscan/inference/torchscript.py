"""TorchScript runtime (PyTorch), for models ONNX cannot express.

Only `torch.jit.load` is used: a TorchScript archive is read by TorchScript's own restricted
unpickler, never by Python's pickle, and `torch.load` checkpoints are refused at import.

Grad-CAM without a second full pass: at load the module's forward graph is split at the target
activation A (the output of a submodule the top-level forward calls, e.g. ``layer4``; found
automatically as the last 4-D activation when the manifest names none) into

    body: x -> A            run without autograd (no graph kept, parameters frozen)
    head: (x, A) -> scores  run with autograd on A only

so an explained batch costs one forward pass plus the backward of the head alone (for a ResNet:
pooling and one linear layer), not a backward through the whole network."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from clearscan.inference.cam import CamUnsupported, gradcam_maps_from_gradients
from clearscan.inference.campp import gradcam_plus_plus_from_gradients
from clearscan.inference.runtime import BatchOutput, Model, ModelLoadError, _softmax

log = logging.getLogger(__name__)


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # torch is an optional extra of the server
        raise ModelLoadError(
            "TorchScript models need PyTorch: pip install 'clearscan[torch]'"
        ) from None
    return torch


def _prune(graph: Any) -> None:
    """Remove nodes whose outputs nobody uses (module calls count as pure here: a model's
    forward has no side effects we need)."""
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph.nodes())):
            outs = list(node.outputs())
            if outs and all(not o.uses() for o in outs):
                node.destroy()
                changed = True


def _submodule_calls(graph: Any) -> list[tuple[str, Any]]:
    """(attribute name, node) of each `self.<name>(...)` call in the top-level forward, in order."""
    self_value = next(iter(graph.inputs()))
    calls = []
    for node in graph.nodes():
        if node.kind() != "prim::CallMethod" or node.s("name") != "forward":
            continue
        owner = node.inputsAt(0).node()
        if owner.kind() == "prim::GetAttr" and owner.inputsAt(0) == self_value:
            calls.append((owner.s("name"), node))
    return calls


def _node_for(graph: Any, target: str) -> Any:
    """The last call of submodule `target` (a module called twice, e.g. a shared activation,
    gives its last output, as a forward hook that keeps the latest value would)."""
    found = None
    for name, node in _submodule_calls(graph):
        if name == target:
            found = node
    if found is None:
        raise CamUnsupported(f"explain.target {target!r} is not a submodule called by forward()")
    return found


class _Split:
    def __init__(self, module: Any, target: str) -> None:
        torch = _torch()
        graph = module.forward.graph
        _node_for(graph, target)  # raises CamUnsupported when absent
        body = graph.copy()
        node = _node_for(body, target)
        body.return_node().replaceInput(0, node.output())
        _prune(body)
        head = graph.copy()
        node = _node_for(head, target)
        act = head.addInput("clearscan_activation")
        act.setType(node.output().type())
        node.output().replaceAllUsesWith(act)
        node.destroy()
        _prune(head)
        make = torch._C._create_function_from_graph
        self.target = target
        self._self = module._c
        self._body = make("clearscan_body", body)
        self._head = make("clearscan_head", head)

    def body(self, x: Any) -> Any:
        return self._body(self._self, x)

    def head(self, x: Any, act: Any) -> Any:
        return self._head(self._self, x, act)


class TorchScriptModel(Model):
    runtime = "torchscript"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._module: Any = None
        self._split: _Split | None = None
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
        if m.explain.method == "gradcam":
            try:
                self._split = self._find_split(module)
            except CamUnsupported as exc:
                self.cam_error = str(exc)
            except RuntimeError as exc:  # a graph TorchScript cannot split
                self.cam_error = f"cannot split the graph at the target: {exc}"
        self._self_test()

    def _find_split(self, module: Any) -> _Split:
        torch = _torch()
        x = torch.from_numpy(self._probe_input()).to(self._torch_device)

        def spatial(split: _Split) -> bool:
            with torch.no_grad():
                act = split.body(x)
            return (
                isinstance(act, torch.Tensor) and act.ndim == 4 and act.shape[2] * act.shape[3] > 1
            )

        target = self.manifest.explain.target
        if target is not None:
            split = _Split(module, target)
            if not spatial(split):
                raise CamUnsupported(
                    f"explain.target {target!r} does not output an N x K x h x w activation"
                )
            return split
        # The last top-level submodule call whose output is a 4-D activation with an extent.
        names: list[str] = []
        for name, _ in _submodule_calls(module.forward.graph):
            if name in names:
                names.remove(name)
            names.append(name)  # ordered by each name's last call
        for name in reversed(names):
            split = _Split(module, name)
            if spatial(split):
                return split
        raise CamUnsupported("no submodule of forward() outputs a 4-D activation")

    def _self_test(self) -> None:
        m = self.manifest
        x = self._probe_input()
        out = self.run(x, explain=False)
        self._check_width(out.probabilities)
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
        if split is None or not (explain or self.ood is not None):
            with torch.inference_mode():
                scores = self._module(x)
            probs, top = self._scores(scores.float().cpu().numpy())
        else:
            with torch.no_grad():
                act = split.body(x)
            if explain:
                leaf = act.requires_grad_(True)
                with torch.enable_grad():
                    # a copy goes into the head: it may modify its input in place (ReLU)
                    scores = split.head(x, leaf.clone())
                probs, top = self._scores(scores.detach().float().cpu().numpy())
                chosen = scores.gather(1, torch.from_numpy(top).to(scores.device).view(-1, 1))
                (grads,) = torch.autograd.grad(chosen.sum(), leaf)
                a = act.detach().float().cpu().numpy()
                g = grads.float().cpu().numpy()
                maps: Callable[[np.ndarray, np.ndarray], np.ndarray] = (
                    gradcam_plus_plus_from_gradients
                    if method == "gradcam++"
                    else gradcam_maps_from_gradients
                )
                cams = maps(a, g)
            else:
                with torch.no_grad():
                    scores = split.head(x, act.clone())
                probs, top = self._scores(scores.float().cpu().numpy())
                a = act.float().cpu().numpy()
            if self.ood is not None:
                ood = self.ood.scores(a, batch)
        run_ms = (time.perf_counter() - t0) * 1000
        return BatchOutput(probabilities=probs, top=top, cams=cams, run_ms=run_ms, ood_scores=ood)

    def _scores(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = _softmax(scores) if self.manifest.output.kind == "logits" else scores
        return probs, self._decide(probs)
