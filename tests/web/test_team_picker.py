"""A user in several teams names the team on every form that creates team-owned rows: the
analysis, batch and dataset-import forms show a team picker, and what is picked owns the row."""

from __future__ import annotations

import re

from sqlalchemy import select

from clearscan.datasets.models import Dataset
from clearscan.jobs.models import Job
from clearscan.teams.models import Team
from tests.batches.helpers import images, make_zip
from tests.datasets.test_datasets_api import class_zip, zip_bytes
from tests.web.test_batch_pages import batch_id_of, form_submit
from tests.web.test_pages import csrf_of

PICKER = 'data-testid="team-select"'


def _team_of(app, model, row_id) -> str | None:
    with app.state.clearscan.sessions() as db:
        return db.scalar(
            select(Team.name).join(model, model.team_id == Team.id).where(model.id == row_id)
        )


def test_forms_show_a_team_picker_and_the_pick_owns_the_row(
    app, client, admin_headers, sign_in, no_worker
):
    for name in ("north", "south"):
        r = client.post("/api/v1/teams", headers=admin_headers, json={"name": name})
        assert r.status_code == 201, r.text
    admin = sign_in("admin")
    # one team: no picker
    assert PICKER not in admin.get("/batches").text
    assert PICKER not in admin.get("/datasets").text
    users = client.get("/api/v1/users", headers=admin_headers).json()["items"]
    admin_id = next(u["id"] for u in users if u["username"] == "admin")
    r = client.patch(
        f"/api/v1/users/{admin_id}", headers=admin_headers, json={"teams": ["north", "south"]}
    )
    assert r.status_code == 200, r.text
    for path in ("/analyze", "/batches", "/datasets"):
        page = admin.get(path).text
        assert PICKER in page, path
        assert '<option value="north">north</option>' in page, path

    # a batch: no team picked is refused on the form, the picked team owns the batch
    r = form_submit(admin, make_zip(images(1)))
    assert r.status_code == 422 and "north, south" in r.text
    batch_id = batch_id_of(form_submit(admin, make_zip(images(1)), team="south"))
    assert _team_of(app, Job, batch_id) == "south"

    # a dataset import, the same
    page = admin.get("/datasets").text
    data = zip_bytes(class_zip({"cat": 2, "dog": 2}))
    form = {"csrf_token": csrf_of(page), "name": "pets", "team": "north"}
    r = admin.post(
        "/datasets",
        data=form,
        files={"file": ("d.zip", data, "application/zip")},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    dataset_id = re.fullmatch(r"/datasets/(.+)", r.headers["location"]).group(1)
    assert _team_of(app, Dataset, dataset_id) == "north"
    # what was picked stays picked when the form is shown again with an error
    form["name"] = "pets"  # taken now
    r = admin.post("/datasets", data=form, files={"file": ("d.zip", data, "application/zip")})
    assert r.status_code == 409
    assert '<option value="north" selected>north</option>' in r.text
