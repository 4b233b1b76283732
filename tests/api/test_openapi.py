"""The documented contract, checked in process (the live fuzzing is in test_contract.py): one
error body, every error status documented, bounded integers, invalid requests refused."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_every_error_is_documented_with_the_one_error_body(client: TestClient) -> None:
    spec = client.get("/api/v1/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    body = spec["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["title", "status", "detail"]  # RFC 9457 problem details
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")):
                    assert list(resp["content"]) == ["application/problem+json"], (path, method)
                    content = resp["content"]["application/problem+json"]["schema"]
                    assert content == {"$ref": "#/components/schemas/ErrorBody"}, (path, method)
    users = spec["paths"]["/api/v1/users/{user_id}"]["patch"]["responses"]
    assert {"401", "403", "404", "409", "413", "422"} <= set(users)


def test_huge_offsets_are_refused_not_crashed(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    for path in ("/api/v1/users", "/api/v1/evaluations", "/api/v1/cases", "/api/v1/audit"):
        r = client.get(path, params={"offset": 10**30}, headers=admin_headers)
        assert r.status_code == 422, path
        assert isinstance(r.json()["detail"], str)
        assert client.get(path, params={"offset": 10**9}, headers=admin_headers).status_code == 200


def test_invalid_values_are_refused(client: TestClient, admin_headers: dict[str, str]) -> None:
    r = client.get("/api/v1/cases", params={"until": "0.5"}, headers=admin_headers)
    assert r.status_code == 422
    ok = client.get("/api/v1/cases", params={"until": "2030-01-01T00:00:00"}, headers=admin_headers)
    assert ok.status_code == 200
    r = client.patch("/api/v1/users/1", json={"disabled": 0}, headers=admin_headers)
    assert r.status_code == 422


def test_a_wrong_method_names_every_allowed_one(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    r = client.request("OPTIONS", "/api/v1/users", headers=admin_headers)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"
