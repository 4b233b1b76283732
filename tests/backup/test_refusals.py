"""What a backup or restore refuses, and says so: a damaged file (named), a non-empty target, a
backup from a newer schema, a missing or wrong key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clearscan.backup import crypto, service
from clearscan.backup.errors import (
    BackupDamaged,
    BackupKeyError,
    NewerSchema,
    TargetNotEmpty,
)
from clearscan.backup.files import blob_path
from tests.backup.conftest import Small, small_site, sources, target


def _folder(small: Small) -> Path:
    return small.location.root / small.name


def test_corrupt_blob_fails_verify_naming_it(small: Small, tmp_path: Path):
    bad = small.blobs[1]
    path = _folder(small) / blob_path(bad)
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    with pytest.raises(BackupDamaged) as err:
        service.verify(small.location, small.name)
    assert bad in err.value.detail and "1 of" in err.value.detail
    assert err.value.exit_code == 3
    # restore checks first and writes nothing
    into = small.settings.model_copy(update={"data_dir": tmp_path / "restored"})
    with pytest.raises(BackupDamaged, match=bad):
        service.restore(small.location, small.name, target(into))
    assert not (tmp_path / "restored").exists()


def test_missing_blob_is_named(small: Small):
    (_folder(small) / blob_path(small.blobs[0])).unlink()
    with pytest.raises(BackupDamaged, match=f"{small.blobs[0]}: missing"):
        service.verify(small.location, small.name)


def test_non_empty_target_is_refused(small: Small, tmp_path: Path):
    into = tmp_path / "restored"
    into.mkdir()
    (into / "something").write_text("live data")
    settings = small.settings.model_copy(update={"data_dir": into})
    with pytest.raises(TargetNotEmpty, match="not empty") as err:
        service.restore(small.location, small.name, target(settings))
    assert err.value.exit_code == 4
    assert sorted(p.name for p in into.iterdir()) == ["something"]


def test_newer_schema_is_refused(small: Small, tmp_path: Path):
    path = _folder(small) / "manifest.json"
    data = json.loads(path.read_text())
    data["alembic_revision"] = "9999_from_the_future"
    data["app_version"] = "99.0.0"
    path.write_text(json.dumps(data))
    into = small.settings.model_copy(update={"data_dir": tmp_path / "restored"})
    with pytest.raises(NewerSchema, match="9999_from_the_future") as err:
        service.restore(small.location, small.name, target(into))
    assert "99.0.0" in err.value.detail and err.value.exit_code == 5
    assert not (tmp_path / "restored").exists()


def test_encrypted_backup_needs_the_right_key(settings, tmp_path: Path):
    small_site(settings)
    key = crypto.parse_key(crypto.new_key())
    from clearscan.backup.target import LocalLocation

    location = LocalLocation(tmp_path / "backups")
    made = service.create(sources(settings), location, key=key)
    service.verify(location, made.name, key=key)
    into = settings.model_copy(update={"data_dir": tmp_path / "restored"})
    with pytest.raises(BackupKeyError, match="is encrypted"):
        service.verify(location, made.name)
    other = crypto.parse_key(crypto.new_key())
    with pytest.raises(BackupKeyError, match="wrong key") as err:
        service.restore(location, made.name, target(into), key=other)
    assert err.value.exit_code == 6 and crypto.key_id(key) in err.value.detail
    assert not (tmp_path / "restored").exists()
    # the manifest is authenticated: an edit is caught
    path = location.root / made.name / "manifest.json"
    data = json.loads(path.read_text())
    data["blobs"] = data["blobs"][1:]
    path.write_text(json.dumps(data))
    with pytest.raises(BackupDamaged, match="altered"):
        service.verify(location, made.name, key=key)
