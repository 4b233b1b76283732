"""Locate the Grad-CAM head of an ONNX graph: the target activation A feeding
global-average-pool -> (flatten) -> Gemm/MatMul(+Add), and the linear layer's weights, so that the
class-weighted activation map (`gradcam.class_activation_maps`) gives Grad-CAM from the same
ONNX Runtime run as the prediction. `expose_output` makes A an output of the graph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from clearscan.inference.types import CamUnsupported

__all__ = ["CamHead", "CamUnsupported", "expose_output", "find_cam_head"]

_POOL_OPS = {"GlobalAveragePool", "ReduceMean"}
_PASS_OPS = {"Flatten", "Reshape", "Squeeze", "Identity"}


@dataclass(frozen=True)
class CamHead:
    target: str  # tensor name of the activation A (N x K x h x w)
    weight: np.ndarray  # C x K
    bias: np.ndarray  # C


def find_cam_head(model: onnx.ModelProto, target: str | None = None) -> CamHead:
    """Locate GAP -> (flatten) -> Gemm/MatMul(+Add) and return its input activation and weights."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {
        n.output[0]: n.attribute[0].t
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }

    def const(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in constants:
            return numpy_helper.to_array(constants[name])
        return None

    pools = [n for n in graph.node if n.op_type in _POOL_OPS and _is_spatial_mean(n, const)]
    if target is not None:
        pools = [n for n in pools if n.input[0] == target]
    for pool in reversed(pools):
        tensor = pool.output[0]
        node = _single_consumer(consumers, tensor)
        while node is not None and node.op_type in _PASS_OPS:
            tensor = node.output[0]
            node = _single_consumer(consumers, tensor)
        if node is None:
            continue
        head = _linear(node, tensor, const, consumers)
        if head is not None:
            weight, bias = head
            return CamHead(target=pool.input[0], weight=weight, bias=bias)
    where = f" at {target!r}" if target else ""
    raise CamUnsupported(f"no global-average-pool + linear head found{where}")


def _is_spatial_mean(node: onnx.NodeProto, const: object) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    axes: list[int] | None = None
    for a in node.attribute:
        if a.name == "axes":
            axes = list(a.ints)
    if axes is None and len(node.input) > 1:
        arr = const(node.input[1])  # type: ignore[operator]
        axes = None if arr is None else [int(x) for x in np.asarray(arr).ravel()]
    return axes is not None and sorted(x % 4 for x in axes) == [2, 3]


def _single_consumer(
    consumers: dict[str, list[onnx.NodeProto]], name: str
) -> onnx.NodeProto | None:
    nodes = consumers.get(name, [])
    return nodes[0] if len(nodes) == 1 else None


def _linear(
    node: onnx.NodeProto, tensor: str, const: object, consumers: dict[str, list[onnx.NodeProto]]
) -> tuple[np.ndarray, np.ndarray] | None:
    get = const  # callable returning an initializer/constant array or None
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        if node.input[0] != tensor or (attrs.get("transA") and attrs["transA"].i):
            return None
        w = get(node.input[1])  # type: ignore[operator]
        if w is None:
            return None
        trans_b = bool(attrs["transB"].i) if "transB" in attrs else False
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        weight = (w if trans_b else w.T) * alpha
        bias = np.zeros(weight.shape[0], dtype=np.float32)
        if len(node.input) > 2 and node.input[2]:
            b = get(node.input[2])  # type: ignore[operator]
            if b is None:
                return None
            beta = attrs["beta"].f if "beta" in attrs else 1.0
            bias = np.broadcast_to(b * beta, (weight.shape[0],)).astype(np.float32)
        return weight.astype(np.float32), bias
    if node.op_type == "MatMul" and node.input[0] == tensor:
        w = get(node.input[1])  # type: ignore[operator]
        if w is None or w.ndim != 2:
            return None
        weight = w.T.astype(np.float32)
        bias = np.zeros(weight.shape[0], dtype=np.float32)
        nxt = _single_consumer(consumers, node.output[0])
        if nxt is not None and nxt.op_type == "Add":
            other = [i for i in nxt.input if i != node.output[0]]
            b = get(other[0]) if other else None  # type: ignore[operator]
            if b is not None:
                bias = np.broadcast_to(b, (weight.shape[0],)).astype(np.float32)
        return weight, bias
    return None


def expose_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Return a copy of `model` that also outputs tensor `name`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if name not in {o.name for o in out.graph.output}:
        out.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return out
