"""Grad-CAM for TorchScript models without a second full pass.

The module's forward graph is split at the target activation A (the output of a submodule the
top-level forward calls, e.g. ``layer4``; found automatically as the last 4-D activation when the
manifest names none) into

    body: x -> A            run without autograd (no graph kept, parameters frozen)
    head: (x, A) -> scores  run with autograd on A only

so an explained batch costs one forward pass plus the backward of the head alone (for a ResNet:
pooling and one linear layer), not a backward through the whole network.

PyTorch is imported inside the functions: this module is imported only with the TorchScript
runtime, which checks first that PyTorch is installed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from clearscan.inference.explain import gradient_maps
from clearscan.inference.types import CamUnsupported

__all__ = ["GraphSplit", "explained_run", "find_split"]


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


def submodule_calls(graph: Any) -> list[tuple[str, Any]]:
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
    for name, node in submodule_calls(graph):
        if name == target:
            found = node
    if found is None:
        raise CamUnsupported(f"explain.target {target!r} is not a submodule called by forward()")
    return found


class GraphSplit:
    """A TorchScript module's forward split at submodule `target`'s output: `body(x)` gives the
    activation, `head(x, activation)` the scores."""

    def __init__(self, module: Any, target: str) -> None:
        import torch

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


def find_split(module: Any, x: Any, target: str | None) -> GraphSplit:
    """The split at `target`, or (None) at the last top-level submodule call whose output is a
    4-D activation with a spatial extent for the probe input `x`. CamUnsupported when there is
    none; RuntimeError when TorchScript cannot split the graph."""
    import torch

    def spatial(split: GraphSplit) -> bool:
        with torch.no_grad():
            act = split.body(x)
        return isinstance(act, torch.Tensor) and act.ndim == 4 and act.shape[2] * act.shape[3] > 1

    if target is not None:
        split = GraphSplit(module, target)
        if not spatial(split):
            raise CamUnsupported(
                f"explain.target {target!r} does not output an N x K x h x w activation"
            )
        return split
    names: list[str] = []
    for name, _ in submodule_calls(module.forward.graph):
        if name in names:
            names.remove(name)
        names.append(name)  # ordered by each name's last call
    for name in reversed(names):
        split = GraphSplit(module, name)
        if spatial(split):
            return split
    raise CamUnsupported("no submodule of forward() outputs a 4-D activation")


def explained_run(
    split: GraphSplit,
    x: Any,
    method: str,
    decide: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One forward pass plus the backward of the head only: (probabilities, top classes, maps
    for the top classes, activation), the last three as NumPy arrays. `decide` turns the N x C
    scores into (probabilities, top classes)."""
    import torch

    with torch.no_grad():
        act = split.body(x)
    leaf = act.requires_grad_(True)
    with torch.enable_grad():
        # a copy goes into the head: it may modify its input in place (ReLU)
        scores = split.head(x, leaf.clone())
    probs, top = decide(scores.detach().float().cpu().numpy())
    chosen = scores.gather(1, torch.from_numpy(top).to(scores.device).view(-1, 1))
    (grads,) = torch.autograd.grad(chosen.sum(), leaf)
    a = act.detach().float().cpu().numpy()
    g = grads.float().cpu().numpy()
    return probs, top, gradient_maps(method, a, g), a
