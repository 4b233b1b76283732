"""Runtimes: one module per value of the manifest's `runtime`, imported only when a version of
that runtime is created (PyTorch is imported only for a TorchScript model, ONNX Runtime only for
an ONNX one).

A new runtime is one module with a `Model` subclass and one line in `RUNTIMES`."""

from __future__ import annotations

import importlib
from pathlib import Path

from clearscan.inference.base import Model
from clearscan.inference.manifest import ModelManifest
from clearscan.inference.types import ModelLoadError

__all__ = ["RUNTIMES", "create_model", "runtime_class"]

# manifest `runtime` -> "module:class" of its Model subclass
RUNTIMES: dict[str, str] = {
    "onnx": "clearscan.inference.runtimes.onnx:OnnxModel",
    "torchscript": "clearscan.inference.runtimes.torchscript:TorchScriptModel",
    "sklearn": "clearscan.inference.runtimes.sklearn:SklearnModel",
}


def runtime_class(runtime: str) -> type[Model]:
    """The Model subclass serving `runtime` (its module imported now)."""
    try:
        path = RUNTIMES[runtime]
    except KeyError:  # the manifest schema refuses other values
        raise ModelLoadError(f"unknown runtime {runtime!r}") from None
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, Model), path
    return cls


def create_model(
    package_dir: Path,
    manifest: ModelManifest,
    *,
    threads: int = 0,
    device: str = "cpu",
    parallel_runs: int = 1,
) -> Model:
    """The runtime object for `manifest.runtime` (not loaded yet)."""
    if manifest.runtime not in RUNTIMES:
        raise ModelLoadError(f"{manifest.ref}: unknown runtime {manifest.runtime!r}")
    cls = runtime_class(manifest.runtime)
    return cls(package_dir, manifest, threads=threads, device=device, parallel_runs=parallel_runs)
