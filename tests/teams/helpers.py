"""A world of two teams for the ownership tests: the default team `general` owns one of
everything that has an id (a case with its image and prediction, a dataset with an item, a batch,
a training run, an evaluation, a dataset import); the team `other` has a clinician and a viewer
who must see none of it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from clearscan.batches.models import BATCH_KIND, BatchItem
from clearscan.datasets.jobs import DATASET_IMPORT_KIND
from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.jobs.models import Job
from clearscan.teams.models import DEFAULT_TEAM, Team
from clearscan.training.evaluation import EVAL_KIND
from clearscan.training.runs import TRAIN_KIND
from tests.conftest import PASSWORD, login, png_bytes


@dataclass
class World:
    ids: dict[str, str]  # path parameter name -> an id the team `general` owns
    other: dict[str, dict[str, str]]  # role -> bearer headers of a member of `other` only
    names: dict[str, str]  # role -> username of that member


def make_user(
    client: TestClient, admin: dict[str, str], name: str, role: str, teams: list[str] | None
) -> dict[str, str]:
    body: dict[str, object] = {"username": name, "password": PASSWORD, "role": role}
    if teams is not None:
        body["teams"] = teams
    r = client.post("/api/v1/users", headers=admin, json=body)
    assert r.status_code == 201, r.text
    return login(client, name, PASSWORD)


def general_world(app: FastAPI, client: TestClient, admin: dict[str, str]) -> World:
    """Create the team `other` with a clinician and a viewer, and one of everything in
    `general` (a case through the API, the rest as rows)."""
    r = client.post("/api/v1/teams", headers=admin, json={"name": "other"})
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/predict", headers=admin, files={"file": ("x.png", png_bytes())})
    assert r.status_code == 200, r.text
    case_id = r.json()["case_id"]
    case = client.get(f"/api/v1/cases/{case_id}", headers=admin).json()
    image = case["images"][0]
    prediction = image["predictions"][0]
    state = app.state.clearscan
    blob = state.blobs.put(png_bytes())
    ids = {
        "case_id": case_id,
        "image_id": image["id"],
        "prediction_id": prediction["id"],
        "idx": "0",
        "finding": "0",
    }
    with state.sessions() as db:
        general = db.scalar(select(Team.id).where(Team.name == DEFAULT_TEAM))
        ds = Dataset(
            id=uuid.uuid4().hex,
            name="general-data",
            kind="images",
            source_format="folder",
            content_hash="0" * 64,
            classes=["a"],
            counts={"train": {"a": 1}},
            n_items=1,
            info={},
            team_id=general,
        )
        db.add(ds)
        db.flush()
        db.add(
            DatasetItem(
                dataset_id=ds.id, idx=0, split="train", label=0, blob=blob, height=256, width=256
            )
        )
        ids["dataset_id"] = ids["ref"] = ds.id
        for key, kind, params in (
            ("batch_id", BATCH_KIND, {"model": "pneumonia-cxr", "items": 1, "user_id": 1}),
            ("run_id", TRAIN_KIND, {"dataset": ds.name}),
            ("eval_id", EVAL_KIND, {"dataset": ds.name, "model": "pneumonia-cxr:1"}),
            ("import_id", DATASET_IMPORT_KIND, {"name": "x"}),
        ):
            job = Job(
                id=uuid.uuid4().hex,
                kind=kind,
                status="succeeded",
                params=params,
                progress={},
                result={},
                team_id=general,
                created_by="admin",
            )
            db.add(job)
            ids[key] = job.id
        db.flush()
        db.add(BatchItem(batch_id=ids["batch_id"], idx=0, digest=blob, status="queued"))
        db.commit()
    other = {
        role: make_user(client, admin, f"other-{role}", role, ["other"])
        for role in ("clinician", "viewer")
    }
    return World(ids=ids, other=other, names={r: f"other-{r}" for r in other})
