"""Helpers for the Helm chart tests: render deploy/helm/clearscan offline with Helm's own Go
SDK (bundled by helm-python-sdk, no helm binary or cluster), and validate rendered objects
against the Kubernetes OpenAPI schemas bundled by kubernetes-validate, strictly (an unknown
field fails)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "clearscan"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
RELEASE = "clearscan"
NAMESPACE = "clinical"
# the oldest Kubernetes the chart supports (Chart.yaml kubeVersion)
MIN_KUBE_VERSION = "1.30.0"

Obj = dict[str, Any]


def _require(module: str, package: str) -> ModuleType:
    """Import `module`; skipped when absent unless CI requires it (CLEARSCAN_E2E_REQUIRED)."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("CLEARSCAN_E2E_REQUIRED"):
            pytest.fail(
                f"{package} is required (CLEARSCAN_E2E_REQUIRED is set): pip install -e '.[dev]'"
            )
        pytest.skip(f"{package} not installed (the dev extra)")


def helm() -> Any:
    """helm_python: Helm 4's chart loading, rendering and linting through its C ABI."""
    return _require("helm_python", "helm-python-sdk")


def kubernetes_validate() -> Any:
    _require("kubernetes_validate", "kubernetes-validate")
    from kubernetes_validate import utils

    return utils


def kube_versions() -> tuple[str, ...]:
    """The oldest supported Kubernetes and the newest one kubernetes-validate has schemas for."""
    return MIN_KUBE_VERSION, kubernetes_validate().latest_version()


def full_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(FULL_VALUES.read_text())
    return values


@dataclass(frozen=True)
class Rendered:
    objects: list[Obj]
    notes: str
    text: str  # every rendered manifest, as Helm wrote it

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.of_kind(kind)}

    def pod_specs(self) -> Iterator[tuple[Obj, Obj]]:
        """(owner, pod spec) of every Deployment and Job."""
        for o in self.objects:
            if o["kind"] in ("Deployment", "Job"):
                yield o, o["spec"]["template"]["spec"]


def name(suffix: str = "") -> str:
    """The name of one of the release's objects (`<release>-<suffix>`)."""
    return f"{RELEASE}-{suffix}" if suffix else RELEASE


def render(values: dict[str, Any] | None = None) -> Rendered:
    """`helm template` of the chart: schema validation, `required` and `fail` included; raises
    helm_python.HelmError (HelmValuesError for the schema, HelmRenderError for a template)."""
    h = helm()
    with h.Chart.load(CHART) as chart:
        manifests: dict[str, str] = chart.render(
            values, name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    objects: list[Obj] = []
    notes = ""
    texts = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        texts.append(text)
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects=objects, notes=notes, text="\n---\n".join(texts))


def validate(obj: Obj, version: str) -> None:
    """Validate one object strictly against Kubernetes `version`; a kind without a schema fails
    too (a typo in apiVersion or kind)."""
    kv = kubernetes_validate()
    kv.validate(obj, version, strict=True)
