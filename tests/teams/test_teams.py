"""Teams: the API, memberships on users, who sees what (lists filtered in SQL, 404 for another
team's ids), who may create cases, and the audit of an admin's access outside their teams."""

from __future__ import annotations

from sqlalchemy import select

from clearscan.audit.models import AuditEvent
from clearscan.cases.models import Case
from clearscan.teams.models import Team
from tests.conftest import png_bytes
from tests.teams.helpers import general_world, make_user

TEAMS = "/api/v1/teams"


def _predict(client, headers, **form):
    return client.post(
        "/api/v1/predict", headers=headers, files={"file": ("x.png", png_bytes())}, data=form
    )


def test_create_and_list_teams(client, admin_headers):
    r = client.post(TEAMS, headers=admin_headers, json={"name": "radiology"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "radiology" and r.json()["members"] == 0
    r = client.post(TEAMS, headers=admin_headers, json={"name": "radiology"})
    assert r.status_code == 409 and "radiology" in r.json()["detail"]
    assert client.post(TEAMS, headers=admin_headers, json={"name": "no spaces"}).status_code == 422
    assert client.post(TEAMS, headers=admin_headers, json={}).status_code == 422
    names = [t["name"] for t in client.get(TEAMS, headers=admin_headers).json()["items"]]
    assert names == ["general", "radiology"]
    h = make_user(client, admin_headers, "rad1", "clinician", ["radiology"])
    assert client.post(TEAMS, headers=h, json={"name": "mine"}).status_code == 403
    mine = client.get(TEAMS, headers=h).json()
    assert [t["name"] for t in mine["items"]] == ["radiology"] and mine["total"] == 1
    assert mine["items"][0]["members"] == 1


def test_users_get_teams_and_the_default_team(client, admin_headers):
    client.post(TEAMS, headers=admin_headers, json={"name": "icu"})
    r = client.post(
        "/api/v1/users",
        headers=admin_headers,
        json={"username": "plain", "password": "correct-horse-battery", "role": "viewer"},
    )
    assert r.status_code == 201 and r.json()["teams"] == ["general"]
    uid = r.json()["id"]
    r = client.post(
        "/api/v1/users",
        headers=admin_headers,
        json={"username": "ghost", "password": "correct-horse-battery", "teams": ["nope"]},
    )
    assert r.status_code == 422 and "'nope'" in r.json()["detail"]
    r = client.patch(f"/api/v1/users/{uid}", headers=admin_headers, json={"teams": ["icu"]})
    assert r.status_code == 200 and r.json()["teams"] == ["icu"]
    r = client.patch(f"/api/v1/users/{uid}", headers=admin_headers, json={"teams": ["x", "icu"]})
    assert r.status_code == 422 and "'x'" in r.json()["detail"]
    r = client.patch(f"/api/v1/users/{uid}", headers=admin_headers, json={"role": "clinician"})
    assert r.json()["teams"] == ["icu"]  # unchanged when not given
    listed = {
        u["username"]: u["teams"]
        for u in client.get("/api/v1/users", headers=admin_headers).json()["items"]
    }
    assert listed["plain"] == ["icu"] and listed["admin"] == ["general"]
    r = client.patch(f"/api/v1/users/{uid}", headers=admin_headers, json={"teams": []})
    assert r.json()["teams"] == []


def test_a_user_in_no_team_sees_nothing_and_cannot_create_cases(client, admin_headers):
    assert _predict(client, admin_headers).status_code == 200
    h = make_user(client, admin_headers, "lonely", "clinician", [])
    assert client.get("/api/v1/cases", headers=h).json() == {"items": [], "total": 0}
    r = _predict(client, h)
    assert r.status_code == 422 and "no team" in r.json()["detail"]
    r = client.post("/api/v1/predict", headers=h, json={"model": "x", "features": {"a": 1}})
    assert r.status_code == 422 and "no team" in r.json()["detail"]


def test_a_user_in_several_teams_names_the_case_team(app, client, admin_headers):
    client.post(TEAMS, headers=admin_headers, json={"name": "north"})
    client.post(TEAMS, headers=admin_headers, json={"name": "south"})
    both = make_user(client, admin_headers, "both", "clinician", ["north", "south"])
    north = make_user(client, admin_headers, "north1", "viewer", ["north"])
    south = make_user(client, admin_headers, "south1", "viewer", ["south"])
    r = _predict(client, both)
    assert r.status_code == 422 and "north, south" in r.json()["detail"]
    assert _predict(client, both, team="west").status_code == 422
    r = _predict(client, both, team="south")
    assert r.status_code == 200, r.text
    case_id = r.json()["case_id"]
    with app.state.clearscan.sessions() as db:
        team = db.scalar(
            select(Team.name).join(Case, Case.team_id == Team.id).where(Case.id == case_id)
        )
    assert team == "south"
    assert client.get(f"/api/v1/cases/{case_id}", headers=south).status_code == 200
    assert client.get(f"/api/v1/cases/{case_id}", headers=north).status_code == 404
    assert client.get("/api/v1/cases", headers=both).json()["total"] == 1


def test_lists_never_leak_another_teams_rows(app, client, admin_headers):
    world = general_world(app, client, admin_headers)
    for _ in range(3):
        assert _predict(client, admin_headers).status_code == 200
    h = world.other["viewer"]
    other_clinician = world.other["clinician"]
    r = _predict(client, other_clinician)
    assert r.status_code == 200
    own = r.json()["case_id"]
    queries = [
        "",
        "?offset=0&limit=200",
        "?offset=1",
        "?offset=3",
        "?offset=1000000000",
        "?user=admin",
        "?label=pneumonia",
        "?label=normal",
        "?since=2000-01-01T00:00:00",
        "?until=2999-01-01T00:00:00",
    ]
    for q in queries:
        body = client.get(f"/api/v1/cases{q}", headers=h).json()
        ids = [c["id"] for c in body["items"]]
        assert set(ids) <= {own}, q
        assert body["total"] <= 1, q
    assert client.get("/api/v1/cases", headers=h).json()["total"] == 1
    assert client.get("/api/v1/cases", headers=admin_headers).json()["total"] == 5
    for path in ("datasets", "batches", "training-runs", "evaluations"):
        for q in ("", "?offset=1000000000", "?limit=200"):
            body = client.get(f"/api/v1/{path}{q}", headers=h).json()
            assert body == {"items": [], "total": 0}, (path, q)
        assert client.get(f"/api/v1/{path}", headers=admin_headers).json()["total"] >= 1
    r = client.get(
        "/api/v1/evaluations/compare",
        headers=h,
        params={"a": world.ids["eval_id"], "b": world.ids["eval_id"]},
    )
    assert r.status_code == 404
    # a batch cannot name another team's images
    r = client.post(
        "/api/v1/batches", headers=other_clinician, json={"images": [world.ids["image_id"]]}
    )
    assert r.status_code == 422 and "does not exist" in r.json()["detail"]


def test_web_case_list_filters_and_counts_per_team(app, client, admin_headers):
    from fastapi.testclient import TestClient

    from tests.conftest import PASSWORD
    from tests.web.test_pages import web_login

    world = general_world(app, client, admin_headers)
    assert _predict(client, world.other["clinician"]).status_code == 200
    with TestClient(app, raise_server_exceptions=False) as browser:
        assert web_login(browser, world.names["viewer"], PASSWORD).status_code == 303
        page = browser.get("/cases").text
        assert world.ids["case_id"] not in page
        assert browser.get(f"/cases/{world.ids['case_id']}").status_code == 404
        assert browser.get("/cases?page=99").status_code == 200
        assert world.ids["case_id"] not in browser.get("/cases?user=admin").text


def test_admin_access_outside_own_teams_is_audited(app, client, admin_headers):
    world = general_world(app, client, admin_headers)
    case_id = world.ids["case_id"]
    assert client.get(f"/api/v1/cases/{case_id}", headers=admin_headers).status_code == 200
    outsider = make_user(client, admin_headers, "admin2", "admin", ["other"])
    for url in (
        f"/api/v1/cases/{case_id}",
        f"/api/v1/images/{world.ids['image_id']}/file",
        f"/api/v1/datasets/{world.ids['dataset_id']}",
        f"/api/v1/training-runs/{world.ids['run_id']}",
    ):
        assert client.get(url, headers=outsider).status_code == 200, url
    with app.state.clearscan.sessions() as db:
        events = db.scalars(
            select(AuditEvent).where(AuditEvent.action == "team.cross_access")
        ).all()
    seen = [(e.actor, e.object_type, e.object_id, e.details.get("team")) for e in events]
    assert ("admin2", "case", case_id, "general") in seen
    assert ("admin2", "image", world.ids["image_id"], "general") in seen
    assert ("admin2", "dataset", world.ids["dataset_id"], "general") in seen
    assert ("admin2", "job", world.ids["run_id"], "general") in seen
    assert all(e.actor == "admin2" for e in events)  # admin, in general, was not audited
