"""Model list out-models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from clearscan.registry.catalog import ModelEntry


class ModelPublic(BaseModel):
    name: str
    version: str
    task: str
    labels: list[str]
    modality: str | None
    body_part: str | None
    status: str
    runtime: str
    explainable: bool
    loaded: bool  # in memory now (the model cache unloads least recently used versions)
    error: str | None = None

    @classmethod
    def of(cls, e: ModelEntry, status: str | None = None) -> ModelPublic:
        m = e.manifest
        return cls(
            name=m.name,
            version=m.version,
            task=m.task,
            runtime=m.runtime,
            loaded=e.model is not None,
            labels=m.labels,
            modality=m.modality,
            body_part=m.body_part,
            status=status or ("unavailable" if e.error is not None else "active"),
            explainable=e.explainable,
            error=e.error,
        )


class ModelDetail(ModelPublic):
    description: str | None
    intended_use: str | None
    limitations: str | None
    license: str | None
    metrics: dict[str, Any]
    training: dict[str, Any]
    input: dict[str, Any]
    model_card: str | None

    @classmethod
    def of_detail(cls, e: ModelEntry, status: str | None = None) -> ModelDetail:
        m = e.manifest
        return cls(
            **ModelPublic.of(e, status).model_dump(),
            description=m.description,
            intended_use=m.intended_use,
            limitations=m.limitations,
            license=m.license,
            metrics=dict(m.metrics),
            training=dict(m.training),
            input=m.input.model_dump()
            if m.input is not None
            else {"features": [f.model_dump() for f in m.features or []]},
            model_card=e.model_card,
        )


class ModelList(BaseModel):
    items: list[ModelPublic]
    total: int


class ModelVersionPublic(BaseModel):
    name: str
    version: str
    status: str  # active | inactive | unavailable
    source: str  # bundled | store
    weights_sha256: str | None
    runtime: str
    explainable: bool
    loaded: bool
    error: str | None = None

    @classmethod
    def of(cls, e: ModelEntry, status: str) -> ModelVersionPublic:
        m = e.manifest
        return cls(
            name=m.name,
            version=m.version,
            status=status,
            source=e.source,
            weights_sha256=m.files.get(m.weights),
            error=e.error,
            runtime=m.runtime,
            explainable=e.explainable,
            loaded=e.model is not None,
        )


class ModelVersionList(BaseModel):
    items: list[ModelVersionPublic]
    total: int


class RollbackResult(BaseModel):
    name: str
    previous_version: str
    active_version: str
