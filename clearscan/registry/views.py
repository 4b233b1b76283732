"""Model listing endpoints."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from clearscan.deps import AnyUser, StateDep
from clearscan.registry.schemas import ModelDetail, ModelList, ModelPublic
from clearscan.registry.service import ModelNotFound

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(state: StateDep, user: AnyUser) -> ModelList:
    items = [ModelPublic.of(e) for e in state.registry.entries()]
    return ModelList(items=items, total=len(items))


@router.get("/models/{name}", response_model=ModelDetail)
def get_model(name: str, state: StateDep, user: AnyUser) -> ModelDetail:
    try:
        return ModelDetail.of_detail(state.registry.get(name))
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from None
