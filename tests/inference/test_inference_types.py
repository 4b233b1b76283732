"""`clearscan.inference.types` is the bottom of inference: importing it (or the micro-batcher
above it) brings in no other module of the package but `clearscan.errors`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clearscan.errors import Unavailable, Unprocessable
from clearscan.inference.types import (
    EXPLAIN_METHODS,
    ExplainMethod,
    ModelLoadError,
    softmax,
)

ROOT = Path(__file__).resolve().parents[2]


def _clearscan_modules_after(module: str) -> set[str]:
    code = (
        f"import sys, json, {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'clearscan')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout))


def test_types_imports_nothing_else_of_the_package():
    assert _clearscan_modules_after("clearscan.inference.types") == {
        "clearscan",
        "clearscan.errors",
        "clearscan.inference",
        "clearscan.inference.types",
    }


def test_the_batcher_needs_only_the_types():
    assert _clearscan_modules_after("clearscan.inference.batching") == {
        "clearscan",
        "clearscan.errors",
        "clearscan.inference",
        "clearscan.inference.batching",
        "clearscan.inference.types",
    }


def test_model_load_error_is_unavailable():
    err = ModelLoadError("m:1.0.0: cannot load")
    assert isinstance(err, Unavailable) and err.status_code == 503
    assert str(err) == err.detail == "m:1.0.0: cannot load"


def test_explain_methods():
    assert EXPLAIN_METHODS == ("gradcam", "gradcam++")
    assert ExplainMethod.parse("gradcam++") is ExplainMethod.GRADCAM_PLUS_PLUS
    assert ExplainMethod.GRADCAM == "gradcam"  # a str: batchers and rows keep the plain name
    with pytest.raises(Unprocessable, match="must be one of gradcam, gradcam\\+\\+"):
        ExplainMethod.parse("lime")


def test_softmax_rows_sum_to_one_and_survive_large_scores():
    p = softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(p, [[0.5, 0.5], [0.25, 0.75]])
