"""Model registry endpoints: list, detail, import, versions, activate, roll back, canary and
shadow. Registry errors answer with their own status through the application's one handler."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from clearscan.api.deps import AdminUser, AnyUser, SessionDep, StateDep, request_context
from clearscan.api.errors import error_responses
from clearscan.errors import Unprocessable
from clearscan.registry import service
from clearscan.registry.packaging import OnnxFlags
from clearscan.registry.schemas import (
    ModelDetail,
    ModelList,
    ModelPublic,
    ModelVersionList,
    ModelVersionPublic,
    RollbackResult,
)

router = APIRouter(tags=["models"])


def _floats(text: str | None, field: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise Unprocessable(f"{field}: comma-separated numbers expected") from None


@router.get("/models", response_model=ModelList)
def list_models(state: StateDep, user: AnyUser) -> ModelList:
    reg = state.registry
    items = [ModelPublic.of(e, reg.status(e)) for e in reg.entries(include_inactive=True)]
    return ModelList(items=items, total=len(items))


@router.post(
    "/models",
    response_model=ModelVersionPublic,
    status_code=201,
    summary="Import a model package (.zip) or a bare .onnx or TorchScript file as a new version",
    responses=error_responses(409, 415),
)
def import_model(
    request: Request,
    db: SessionDep,
    state: StateDep,
    admin: AdminUser,
    file: Annotated[
        UploadFile, File(description="package .zip, or a bare .onnx or TorchScript file")
    ],
    name: Annotated[str | None, Form(max_length=64)] = None,
    version: Annotated[str | None, Form(max_length=64)] = None,
    labels: Annotated[str | None, Form(max_length=4000, description="a,b,... (bare .onnx)")] = None,
    channels: Annotated[int | None, Form(ge=1, le=3)] = None,
    height: Annotated[int | None, Form(ge=1, le=4096)] = None,
    width: Annotated[int | None, Form(ge=1, le=4096)] = None,
    mean: Annotated[str | None, Form(max_length=200)] = None,
    std: Annotated[str | None, Form(max_length=200)] = None,
    modality: Annotated[str | None, Form(max_length=16)] = None,
) -> ModelVersionPublic:
    flags = OnnxFlags(
        name=name,
        version=version,
        labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else None,
        channels=channels,
        input_size=(height, width) if height and width else None,
        mean=_floats(mean, "mean"),
        std=_floats(std, "std"),
        modality=modality,
    )
    manifest = service.import_upload(
        db=db,
        ctx=request_context(request, admin.username),
        store=state.store,
        registry=state.registry,
        upload=file.file,
        flags=flags,
    )
    entry = state.registry.version(manifest.name, manifest.version)
    return ModelVersionPublic.of(entry, state.registry.status(entry))


@router.get("/models/{name}", response_model=ModelDetail)
def get_model(name: str, state: StateDep, user: AnyUser) -> ModelDetail:
    entry = state.registry.describe(name)
    return ModelDetail.of_detail(entry, state.registry.status(entry))


@router.get("/models/{name}/versions", response_model=ModelVersionList)
def list_versions(name: str, state: StateDep, user: AnyUser) -> ModelVersionList:
    reg = state.registry
    items = [ModelVersionPublic.of(e, reg.status(e)) for e in reg.versions(name)]
    return ModelVersionList(items=items, total=len(items))


@router.post("/models/{name}/versions/{version}/activate", response_model=ModelVersionPublic)
def activate(
    name: str, version: str, request: Request, db: SessionDep, state: StateDep, admin: AdminUser
) -> ModelVersionPublic:
    entry = service.activate(
        db=db,
        ctx=request_context(request, admin.username),
        registry=state.registry,
        name=name,
        version=version,
    )
    return ModelVersionPublic.of(entry, state.registry.status(entry))


@router.post(
    "/models/{name}/rollback", response_model=RollbackResult, responses=error_responses(409)
)
def rollback(
    name: str, request: Request, db: SessionDep, state: StateDep, admin: AdminUser
) -> RollbackResult:
    old, new = service.rollback(
        db=db, ctx=request_context(request, admin.username), registry=state.registry, name=name
    )
    return RollbackResult(name=name, previous_version=old, active_version=new)


class CanarySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(max_length=64)
    percent: int = Field(ge=0, le=100, description="share of cases (0-100) routed to the canary")


class ShadowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(max_length=64)


class RolloutUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    canary: CanarySpec | None = None
    shadow: ShadowSpec | None = None


@router.get("/models/{name}/rollout", summary="Active version, history, canary and shadow")
def get_rollout(name: str, state: StateDep, user: AnyUser) -> dict[str, object]:
    return state.registry.rollout(name)


@router.put(
    "/models/{name}/rollout",
    summary="Set (or clear, with null) the canary and shadow",
    responses=error_responses(409),
)
def put_rollout(
    name: str,
    body: RolloutUpdate,
    request: Request,
    db: SessionDep,
    state: StateDep,
    admin: AdminUser,
) -> dict[str, object]:
    return service.set_rollout(
        db=db,
        ctx=request_context(request, admin.username),
        registry=state.registry,
        name=name,
        canary=(body.canary.version, body.canary.percent) if body.canary else None,
        shadow=body.shadow.version if body.shadow else None,
    )


@router.get(
    "/models/{name}/rollout/report",
    summary="Agreement of the shadow version with what was served",
    responses=error_responses(409),
)
def rollout_report(
    name: str,
    db: SessionDep,
    state: StateDep,
    admin: AdminUser,
    version: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, object]:
    return service.shadow_report(db=db, registry=state.registry, name=name, version=version)
