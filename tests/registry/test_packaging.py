"""Packaging: pickles are recognised under any name (with and without a protocol header), zips
that point outside the package or hold too much are refused, torch archives are told apart."""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from clearscan.errors import Unprocessable
from clearscan.registry.errors import ImportRejected, VersionExists
from clearscan.registry.packaging import (
    MAX_FILES,
    PICKLE_SNIFF_BYTES,
    OnnxFlags,
    check_files,
    looks_like_pickle,
    refuse_pickle,
    torch_archive_kind,
    unpack,
)
from tests.conftest import png_bytes


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("size", [3, 3000])
def test_pickles_of_every_protocol_are_recognised(protocol, size):
    payload = pickle.dumps(collections.OrderedDict(w=list(range(size))), protocol=protocol)
    assert looks_like_pickle(payload[:PICKLE_SNIFF_BYTES])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world\n" * 500,
        b'{"name": "m", "version": "1.0.0"}',
        png_bytes(),
        np.random.default_rng(0).bytes(PICKLE_SNIFF_BYTES),
        b"PK\x03\x04" + bytes(200),
    ],
    ids=["empty", "text", "json", "png", "random", "zip-header"],
)
def test_other_formats_are_not_pickles(data):
    assert not looks_like_pickle(data[:PICKLE_SNIFF_BYTES])


def test_pickle_refused_by_suffix_or_content():
    for name in ("w.pkl", "w.PICKLE", "model.joblib"):
        with pytest.raises(ImportRejected, match="pickle"):
            refuse_pickle(name, b"")
    with pytest.raises(ImportRejected, match=r"calibration\.bin: pickle"):
        refuse_pickle("calibration.bin", pickle.dumps([1, 2, 3], protocol=0))
    refuse_pickle("model.onnx", b"\x08\x07\x12\x07pytorch")  # not a pickle: no error


def test_package_files_are_checked_for_pickles(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    check_files(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.dat").write_bytes(pickle.dumps({"a": 1}, protocol=1))
    with pytest.raises(ImportRejected, match=r"x\.dat"):
        check_files(tmp_path)


def _zip(path: Path, members: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    ("members", "symlink", "match"),
    [
        ({"../evil": b"x"}, None, "outside the package"),
        ({"/abs": b"x"}, None, "outside the package"),
        ({"a\\b": b"x"}, None, "outside the package"),
        ({"c:x": b"x"}, None, "outside the package"),
        ({}, "link", "symbolic link"),
        ({"w.pkl": b"x"}, None, "pickle"),
        ({f"f{i}": b"" for i in range(MAX_FILES + 1)}, None, f"at most {MAX_FILES}"),
        ({"big": bytes(2048)}, None, "zip bomb"),
    ],
)
def test_zip_checks(tmp_path, members, symlink, match):
    src = _zip(tmp_path / "p.zip", members, symlink=symlink)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(ImportRejected, match=match):
        unpack(src, staging, OnnxFlags(), max_bytes=1024)
    assert not any(staging.iterdir())  # refused before anything was written


def test_zip_inside_one_folder_is_unpacked_at_the_top(tmp_path):
    src = _zip(tmp_path / "p.zip", {"pkg/manifest.json": b"{}", "pkg/model.onnx": b"x"})
    staging = tmp_path / "staging"
    staging.mkdir()
    unpack(src, staging, OnnxFlags(), max_bytes=1 << 20)
    assert sorted(p.name for p in staging.iterdir()) == ["manifest.json", "model.onnx"]


def test_torch_archives_are_told_apart(tmp_path):
    script = _zip(
        tmp_path / "s.pt",
        {"m/data.pkl": b"", "m/constants.pkl": b"", "m/code/__torch__/m.py": b""},
    )
    checkpoint = _zip(tmp_path / "c.pt", {"m/data.pkl": b"", "m/data/0": b""})
    package = _zip(tmp_path / "p.zip", {"manifest.json": b"{}"})
    assert torch_archive_kind(script) == "torchscript"
    assert torch_archive_kind(checkpoint) == "checkpoint"
    assert torch_archive_kind(package) is None
    assert torch_archive_kind(tmp_path / "missing.zip") is None
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(ImportRejected, match=r"torch\.save checkpoint"):
        unpack(checkpoint, staging, OnnxFlags(), max_bytes=1 << 20)
    with pytest.raises(ImportRejected, match="--labels and --input-size"):
        unpack(script, staging, OnnxFlags(), max_bytes=1 << 20)


def test_bare_file_that_is_not_onnx_is_refused(tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ImportRejected, match="not a readable ONNX model"):
        unpack(src, tmp_path, OnnxFlags(), max_bytes=1 << 20)


def test_import_errors_answer_422_and_an_existing_version_409():
    assert isinstance(ImportRejected("x"), Unprocessable) and ImportRejected.status_code == 422
    assert issubclass(VersionExists, ImportRejected) and VersionExists.status_code == 409
    assert str(ImportRejected("names the problem")) == "names the problem"


def test_bare_onnx_is_wrapped_with_a_sanitised_name(tmp_path):
    import json

    from clearscan.registry.catalog import BUNDLED_DIR

    src = tmp_path / "My Model.onnx"
    src.write_bytes((BUNDLED_DIR / "pneumonia-cxr" / "model.onnx").read_bytes())
    staging = tmp_path / "staging"
    staging.mkdir()
    unpack(src, staging, OnnxFlags(labels=["a", "b"]), max_bytes=1 << 30)
    manifest = json.loads((staging / "manifest.json").read_text())
    assert manifest["name"] == "my-model" and manifest["version"] == "1.0.0"
    assert manifest["labels"] == ["a", "b"] and set(manifest["files"]) == {"model.onnx"}
    assert (staging / "model.onnx").read_bytes() == src.read_bytes()
