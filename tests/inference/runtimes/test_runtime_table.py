"""Runtimes are chosen by the manifest's `runtime` through one table and imported only when a
version of that runtime is created: ONNX Runtime only for ONNX models, PyTorch only for
TorchScript ones."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clearscan.inference.base import Model
from clearscan.inference.manifest import ModelManifest
from clearscan.inference.runtimes import RUNTIMES, runtime_class
from clearscan.inference.types import ModelLoadError

ROOT = Path(__file__).resolve().parents[3]


def test_every_manifest_runtime_has_an_entry():
    runtimes = set(ModelManifest.model_fields["runtime"].annotation.__args__)  # type: ignore[union-attr]
    assert set(RUNTIMES) == runtimes


def test_runtime_class():
    for name in ("onnx", "sklearn"):
        cls = runtime_class(name)
        assert issubclass(cls, Model) and cls.runtime == name
    with pytest.raises(ModelLoadError, match="unknown runtime 'tflite'"):
        runtime_class("tflite")


def test_runtimes_are_imported_only_when_used():
    code = textwrap.dedent(
        """
        import sys
        from clearscan.inference import runtimes, tasks  # noqa: F401
        heavy = ("onnxruntime", "onnx", "torch", "sklearn", "skops")
        assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
        runtimes.runtime_class("sklearn")
        assert "onnxruntime" not in sys.modules and "torch" not in sys.modules
        runtimes.runtime_class("onnx")
        assert "onnxruntime" in sys.modules and "torch" not in sys.modules
        runtimes.runtime_class("torchscript")  # the module, not PyTorch: that comes at load
        assert "torch" not in sys.modules
        print("LAZY-OK")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "LAZY-OK" in out.stdout, out.stdout + out.stderr
