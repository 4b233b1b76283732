"""The feature preview of table datasets is bounded (422 naming the cap, before the table is read)
and cached (a hit computes nothing; another dataset, other parameters or changed content miss)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from clearscan.app import create_app
from clearscan.training import tabular
from clearscan.training.previews import PreviewCache
from tests.conftest import ADMIN_PASSWORD, login
from tests.training.test_sensor_streams import stream_csv
from tests.training.test_training_runs import upload
from tests.web.test_pages import web_login

ROWS = 12 * 256  # stream_csv(): 12 recordings of 256 samples


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> PreviewCache:
    cache = PreviewCache(size=4)
    monkeypatch.setattr(tabular, "PREVIEWS", cache)
    return cache


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the tables the previews read."""
    loads: list[int] = []
    real = tabular.load_table

    def counted(*args: Any, **kwargs: Any) -> tabular.Table:
        loads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tabular, "load_table", counted)
    return loads


def _client(settings, model_cache, **update):
    app = create_app(settings.model_copy(update=update), model_cache=model_cache)
    return TestClient(app, raise_server_exceptions=False)


def _stream(c: TestClient, headers: dict[str, str], name: str, seed: int = 0) -> dict:
    return upload(
        c,
        headers,
        name,
        stream_csv(seed=seed),
        filename=f"{name}.csv",
        target="label",
        time_column="t",
        group_column="rec",
    )


def test_preview_window_cap_names_the_setting(settings, model_cache, fresh_cache, monkeypatch):
    loads = _count_loads(monkeypatch)
    # default windows (64 every 32) cover about 3072 / 32 x 64 = 6,208 samples
    with _client(settings, model_cache, preview_max_window_samples=10_000) as c:
        admin = login(c, "admin", ADMIN_PASSWORD)
        ds = _stream(c, admin, "gait")
        url = f"/api/v1/datasets/{ds['id']}/features/preview"
        assert c.get(url, headers=admin).status_code == 200
        r = c.get(f"{url}?step=1", headers=admin)  # 3,073 windows x 64 samples
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "CLEARSCAN_PREVIEW_MAX_WINDOW_SAMPLES" in detail and "10,000" in detail
        assert "use a step of at least 20" in detail
        r = c.get(f"{url}?window=2000&step=200", headers=admin)  # 16 windows x 2,000 samples
        assert r.status_code == 422 and "at least 615 or a shorter window" in r.json()["detail"]
        assert c.get(f"{url}?step=20", headers=admin).status_code == 200
        assert len(loads) == 2  # the refused previews read nothing


def test_preview_row_cap_names_the_setting(settings, model_cache, fresh_cache):
    with _client(settings, model_cache, preview_max_rows=ROWS - 1) as c:
        admin = login(c, "admin", ADMIN_PASSWORD)
        ds = _stream(c, admin, "gait")
        r = c.get(f"/api/v1/datasets/{ds['id']}/features/preview", headers=admin)
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == (
            f"dataset 'gait' has {ROWS:,} rows; the feature preview reads at most "
            f"{ROWS - 1:,} (CLEARSCAN_PREVIEW_MAX_ROWS)"
        )
        # the dataset page shows the refusal in place of the features
        assert web_login(c, "admin", ADMIN_PASSWORD).status_code == 303
        page = c.get(f"/datasets/{ds['id']}")
        assert page.status_code == 200 and "CLEARSCAN_PREVIEW_MAX_ROWS" in page.text


def test_preview_is_cached_by_dataset_parameters_and_content(
    settings, model_cache, fresh_cache, monkeypatch
):
    loads = _count_loads(monkeypatch)
    with _client(settings, model_cache) as c:
        admin = login(c, "admin", ADMIN_PASSWORD)
        ds = _stream(c, admin, "gait")
        url = f"/api/v1/datasets/{ds['id']}/features/preview"
        first = c.get(url, headers=admin).json()
        assert (fresh_cache.hits, fresh_cache.misses, len(loads)) == (0, 1, 1)
        assert c.get(url, headers=admin).json() == first  # a hit: nothing recomputed
        assert (fresh_cache.hits, fresh_cache.misses, len(loads)) == (1, 1, 1)
        c.get(f"{url}?step=16", headers=admin)  # other parameters: computed
        assert (fresh_cache.misses, len(loads)) == (2, 2)
        other = _stream(c, admin, "gait2", seed=1)  # another dataset: computed
        c.get(f"/api/v1/datasets/{other['id']}/features/preview", headers=admin)
        assert (fresh_cache.misses, len(loads)) == (3, 3)
        # changed content (the stored description): the old entry is never answered
        from clearscan.datasets.models import Dataset

        state = c.app.state.clearscan
        with state.sessions() as db:
            row = db.get(Dataset, ds["id"])
            row.info = {**row.info, "license": "CC-BY-4.0"}
            db.commit()
        c.get(url, headers=admin)
        assert (fresh_cache.misses, len(loads)) == (4, 4)
        # the LRU stays small
        for step in (8, 9, 10, 11, 12):
            c.get(f"{url}?step={step}", headers=admin)
        assert len(fresh_cache) == 4
