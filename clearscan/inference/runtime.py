# TEMPORARY SHIM (redesign): re-exports for the import sweep; delete after.
"""Old home of the runtimes: see `clearscan.inference.types`, `.base`, `.runtimes`."""

from clearscan.inference.base import Model, auto_parallel_runs, cpu_cores
from clearscan.inference.runtimes import create_model
from clearscan.inference.runtimes.onnx import PARALLEL_MAX_WEIGHTS_BYTES, OnnxModel, onnx_providers
from clearscan.inference.types import EXPLAIN_METHODS, BatchOutput, ModelLoadError
from clearscan.inference.types import softmax as _softmax

__all__ = [
    "EXPLAIN_METHODS",
    "PARALLEL_MAX_WEIGHTS_BYTES",
    "BatchOutput",
    "Model",
    "ModelLoadError",
    "OnnxModel",
    "_softmax",
    "auto_parallel_runs",
    "cpu_cores",
    "create_model",
    "onnx_providers",
]
