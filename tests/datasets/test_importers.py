"""Dataset import (service + readers) on a real SQLite database and blob store: layouts, splits,
determinism, warnings, the three source formats, and refusals that store nothing."""

from __future__ import annotations

import importlib.util
import io
import pickle
import shutil
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from clearscan.audit.service import RequestContext
from clearscan.datasets import service
from clearscan.datasets.importers import SPLITS, DatasetError
from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.db import create_db_engine, make_session_factory
from clearscan.db.migrate import upgrade
from clearscan.imaging import Limits, decode
from clearscan.storage.local import LocalBlobStore
from tests.conftest import chest_like, dicom_bytes, png_bytes

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    sessions: object
    blobs: object
    blob_root: Path


@pytest.fixture
def env(tmp_path) -> Iterator[Env]:
    """A migrated SQLite database and a local blob store of its own (no app, no models)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = create_db_engine(url)
    root = tmp_path / "blobs"
    try:
        yield Env(make_session_factory(engine), LocalBlobStore(root), root)
    finally:
        engine.dispose()


def do_import(env: Env, source: Path, name: str, **options) -> Dataset:
    with env.sessions() as db:
        ds = service.import_dataset(
            db=db,
            blobs=env.blobs,
            ctx=RequestContext(actor="tester"),
            source=source,
            options=service.ImportOptions(name=name, **options),
            limits=Limits(),
            max_bytes=2**30,
        )
        db.refresh(ds)
        db.expunge(ds)
        return ds


def items(env: Env, ds: Dataset) -> list[DatasetItem]:
    with env.sessions() as db:
        rows = db.scalars(
            select(DatasetItem).where(DatasetItem.dataset_id == ds.id).order_by(DatasetItem.idx)
        ).all()
        for r in rows:
            db.expunge(r)
        return list(rows)


def blob_files(root: Path) -> set[str]:
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def row_counts(env: Env) -> tuple[int, int]:
    with env.sessions() as db:
        return (
            db.scalar(select(func.count()).select_from(Dataset)),
            db.scalar(select(func.count()).select_from(DatasetItem)),
        )


def gray(rng: np.random.Generator, size: int = 16) -> bytes:
    return png_bytes(rng.random((size, size)))


def rgb(rng: np.random.Generator, size: int = 16) -> bytes:
    return png_bytes(rng.random((size, size, 3)))


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def class_folders(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for cls, n in sizes.items():
        for i in range(n):
            write(root / cls / f"{i:03d}.png", gray(rng))
    return root


def zip_dir(src: Path, dest: Path, prefix: str, *, reverse: bool = False) -> Path:
    files = sorted((p for p in src.rglob("*") if p.is_file()), reverse=reverse)
    with zipfile.ZipFile(dest, "w") as zf:
        for p in files:
            zf.write(p, f"{prefix}{p.relative_to(src).as_posix()}")
    return dest


def norm(text: str) -> str:
    return " ".join(text.split())


# --- image folders -------------------------------------------------------------------------------


def test_class_folders_get_a_stratified_deterministic_validation_split(env, tmp_path):
    sizes = {"alpha": 12, "beta": 20, "gamma": 40}
    src = class_folders(tmp_path / "src", sizes)
    # the content is sniffed, never the name: a PNG without an extension and one named .jpg
    (src / "alpha" / "000.png").rename(src / "alpha" / "noext")
    (src / "beta" / "000.png").rename(src / "beta" / "really-a-png.jpg")
    write(src / "gamma" / ".DS_Store", b"\0junk")  # hidden files are skipped

    a = do_import(env, src, "first")
    assert a.kind == "images" and a.source_format == "folder"
    assert a.classes == ["alpha", "beta", "gamma"]
    assert set(a.counts) == {"train", "val"}
    for cls, n in sizes.items():
        val, train = a.counts["val"][cls], a.counts["train"][cls]
        assert train + val == n
        assert abs(val - 0.15 * n) <= 1, (cls, val)  # stratified: ~15 % of every class
        assert val >= 1
    assert a.n_items == sum(sizes.values())
    assert a.info["splits"]["validation"].startswith("made")
    assert a.info["splits"]["fraction"] == 0.15 and a.info["splits"]["seed"] == 0
    assert a.info["channels"] == 1 and a.info["height"] == {"min": 16, "max": 16}

    rows = items(env, a)
    assert len(rows) == a.n_items
    assert [r.idx for r in rows] == list(range(a.n_items))
    assert all(env.blobs.exists(r.blob) for r in rows)
    per = Counter((r.split, a.classes[r.label]) for r in rows)
    assert {(s, c): n for s, cs in a.counts.items() for c, n in cs.items()} == dict(per)
    # every stored blob is the original image's bytes
    originals = {p.read_bytes() for p in src.rglob("*") if p.is_file() and p.name != ".DS_Store"}
    assert {env.blobs.get(r.blob) for r in rows} == originals

    # the same source under another name: same hash, same split of every image
    b = do_import(env, src, "second")
    assert b.content_hash == a.content_hash and b.counts == a.counts
    assert [(r.split, r.label, r.blob) for r in items(env, b)] == [
        (r.split, r.label, r.blob) for r in rows
    ]
    # a different source gives a different hash
    write(src / "gamma" / "extra.png", gray(np.random.default_rng(99)))
    assert do_import(env, src, "third").content_hash != a.content_hash


def test_split_folders_are_kept_as_given(env, tmp_path):
    rng = np.random.default_rng(1)
    given = {"train": {"a": 12, "b": 11}, "val": {"a": 3, "b": 4}, "test": {"a": 5, "b": 2}}
    for split, per in given.items():
        for cls, n in per.items():
            for i in range(n):
                write(tmp_path / "src" / split / cls / f"{i}.png", gray(rng))
    ds = do_import(env, tmp_path / "src", "given")
    assert ds.counts == given
    assert ds.info["splits"]["validation"] == "from the source"
    rows = items(env, ds)
    assert Counter(r.split for r in rows) == {"train": 23, "val": 7, "test": 7}


def test_split_folder_aliases_and_a_missing_val_split(env, tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("Training", 20), ("Testing", 6)):
        for cls in ("a", "b"):
            for i in range(n):
                write(tmp_path / "src" / split / cls / f"{i}.png", gray(rng))
    ds = do_import(env, tmp_path / "src", "aliases")
    # test is kept as given; val is carved out of train only
    assert ds.counts["test"] == {"a": 6, "b": 6}
    assert ds.counts["val"] == {"a": 3, "b": 3}
    assert ds.counts["train"] == {"a": 17, "b": 17}
    assert ds.info["splits"]["validation"].startswith("made")


def test_zip_with_a_wrapping_folder_matches_the_folder(env, tmp_path):
    src = class_folders(tmp_path / "wrap", {"cat": 12, "dog": 14}, seed=3)
    folder = do_import(env, src, "from-folder")
    archive = zip_dir(src, tmp_path / "ds.zip", "wrap/")
    # directory entries and macOS junk in the archive are ignored
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("wrap/", b"")
        zf.writestr("__MACOSX/wrap/cat/._000.png", b"\0\5\26\7junk")
        zf.writestr("wrap/.DS_Store", b"junk")
    zipped = do_import(env, archive, "from-zip")
    assert zipped.source_format == "folder"
    assert zipped.content_hash == folder.content_hash
    assert zipped.counts == folder.counts and zipped.classes == ["cat", "dog"]
    assert sorted(r.blob for r in items(env, zipped)) == sorted(r.blob for r in items(env, folder))


def test_zip_entry_order_does_not_change_the_split(env, tmp_path):
    src = class_folders(tmp_path / "src", {"cat": 12, "dog": 14}, seed=4)
    a = do_import(env, zip_dir(src, tmp_path / "a.zip", "wrap/"), "sorted")
    b = do_import(env, zip_dir(src, tmp_path / "b.zip", "wrap/", reverse=True), "reversed")
    assert b.content_hash == a.content_hash


def test_dicom_images_in_class_folders(env, tmp_path):
    for cls in ("normal", "opacity"):
        for i in range(6):
            arr = chest_like(32, seed=i + (10 if cls == "opacity" else 0))
            write(tmp_path / "src" / cls / f"{i}.dcm", dicom_bytes(arr))
    ds = do_import(env, tmp_path / "src", "dicoms")
    assert ds.classes == ["normal", "opacity"] and ds.n_items == 12
    assert ds.info["channels"] == 1 and ds.info["height"] == {"min": 32, "max": 32}
    rows = items(env, ds)
    assert all(decode(env.blobs.get(r.blob)).format == "dicom" for r in rows)


# --- MedMNIST .npz -------------------------------------------------------------------------------


def npz_arrays(n: int, rng: np.random.Generator, classes: int = 2):
    images = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    labels = (np.arange(n) % classes).reshape(n, 1).astype(np.uint8)
    return images, labels


def test_npz_splits_counts_labels_and_pixels(env, tmp_path):
    rng = np.random.default_rng(5)
    tr, trl = npz_arrays(20, rng)
    va, val = npz_arrays(6, rng)
    te, tel = npz_arrays(8, rng)
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        train_images=tr,
        train_labels=trl,
        val_images=va,
        val_labels=val,
        test_images=te,
        test_labels=tel,
    )
    ds = do_import(env, path, "mnist")
    assert ds.source_format == "npz" and ds.kind == "images"
    assert ds.classes == ["0", "1"]
    assert ds.counts == {
        "train": {"0": 10, "1": 10},
        "val": {"0": 3, "1": 3},
        "test": {"0": 4, "1": 4},
    }
    assert ds.info["splits"]["validation"] == "from the source"
    rows = items(env, ds)
    assert len(rows) == 34
    # rows are stored in order train, val, test, each image's pixels unchanged
    for r, arr, lab in ((rows[0], tr[0], trl[0, 0]), (rows[20], va[0], val[0, 0])):
        stored = np.asarray(Image.open(io.BytesIO(env.blobs.get(r.blob))))
        assert np.array_equal(stored, arr) and r.label == lab
    assert rows[26].split == "test" and rows[25].split == "val"

    named = do_import(env, path, "mnist-named", labels=["a", "b"])
    assert named.classes == ["a", "b"] and named.counts["test"] == {"a": 4, "b": 4}


def test_npz_rgb_and_val_split_made(env, tmp_path):
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40, dtype=np.int64) % 2
    path = tmp_path / "rgb.npz"
    np.savez(path, train_images=images, train_labels=labels)
    ds = do_import(env, path, "rgb")
    assert ds.info["channels"] == 3
    assert ds.counts["val"] == {"0": 3, "1": 3} and ds.counts["train"] == {"0": 17, "1": 17}


def test_npz_refusals(env, tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    tr, trl = npz_arrays(10, rng, classes=3)

    def refused(name: str, **arrays) -> str:
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(DatasetError) as err:
            do_import(env, path, name)
        return err.value.detail

    path = tmp_path / "few.npz"
    np.savez(path, train_images=tr, train_labels=trl)
    with pytest.raises(DatasetError) as err:
        do_import(env, path, "few", labels=["a", "b"])
    assert "labels" in err.value.detail and "2" in err.value.detail

    assert "train_images" in refused("notrain", val_images=tr, val_labels=trl)
    assert "expected C-ordered uint8" in refused(
        "floats", train_images=tr.astype(np.float32), train_labels=trl
    )
    assert "uint8" in refused("int16", train_images=tr.astype(np.int16), train_labels=trl)

    # object arrays would need pickle to load: refused from the header, pickle never runs
    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle was used")

    ragged = np.array([np.zeros(3), np.zeros(4)], dtype=object)
    path = tmp_path / "object.npz"
    np.savez(path, train_images=ragged, train_labels=np.array([0, 1]))
    path2 = tmp_path / "object-labels.npz"
    np.savez(path2, train_images=tr, train_labels=np.array([object()] * 10, dtype=object))
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    for p, name, array in ((path, "obj", "train_images"), (path2, "obj-labels", "train_labels")):
        with pytest.raises(DatasetError) as err:
            do_import(env, p, name)
        assert "object" in err.value.detail and "pickle" in err.value.detail
        assert array in err.value.detail
    assert row_counts(env) == (0, 0)


# --- warnings ------------------------------------------------------------------------------------


def test_tiny_class_and_cross_split_duplicate_warnings(env, tmp_path):
    rng = np.random.default_rng(8)
    same = gray(rng)
    for split, per in (("train", {"common": 20, "rare": 5}), ("test", {"common": 10, "rare": 10})):
        for cls, n in per.items():
            for i in range(n):
                write(tmp_path / "src" / split / cls / f"{i}.png", gray(rng))
    write(tmp_path / "src" / "train" / "common" / "leak.png", same)
    write(tmp_path / "src" / "test" / "common" / "leak.png", same)
    ds = do_import(env, tmp_path / "src", "warned")
    warnings = ds.info["warnings"]
    assert any("'rare'" in w and "train" in w for w in warnings), warnings
    assert not any("'common'" in w and "in train" in w for w in warnings), warnings
    assert any("more than one split" in w and w.startswith("1 ") for w in warnings), warnings
    assert not any("within a split" in w for w in warnings), warnings


def test_duplicate_within_a_split_is_warned(env, tmp_path):
    src = class_folders(tmp_path / "src", {"a": 12, "b": 12}, seed=9)
    shutil.copy(src / "a" / "000.png", src / "a" / "copy.png")
    ds = do_import(env, src, "dups")
    ws = ds.info["warnings"]
    assert any("within a split" in w for w in ws) or any("more than one split" in w for w in ws)


def test_one_image_in_three_splits_is_not_a_within_split_duplicate(env, tmp_path):
    rng = np.random.default_rng(10)
    same = gray(rng)
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            for i in range(10):
                write(tmp_path / "src" / split / cls / f"{i}.png", gray(rng))
        write(tmp_path / "src" / split / "a" / "same.png", same)
    ws = do_import(env, tmp_path / "src", "three")
    assert any("more than one split" in w for w in ws.info["warnings"])
    assert not any("within a split" in w for w in ws.info["warnings"]), ws.info["warnings"]


# --- refusals: a DatasetError naming the problem, and nothing stored ------------------------------


def _one_class(tmp: Path):
    return class_folders(tmp / "src", {"only": 12}), {}, ["one class", "'only'"]


def _mixed_channels(tmp: Path):
    src = class_folders(tmp / "src", {"a": 6, "b": 6})
    write(src / "b" / "colour.png", rgb(np.random.default_rng(1)))
    return src, {}, ["mixed channel", "class 'b'"]


def _not_an_image(tmp: Path):
    src = class_folders(tmp / "src", {"a": 6, "b": 6})
    write(src / "b" / "notes.txt", "just some notes, not pixels\n")
    return src, {}, ["a file in 'b'"]


def _top_level_file(tmp: Path):
    src = class_folders(tmp / "src", {"a": 6, "b": 6})
    write(src / "stray.png", gray(np.random.default_rng(2)))
    return src, {}, ["top level", "class"]


def _mixed_layouts(tmp: Path):
    class_folders(tmp / "src" / "train", {"a": 6, "b": 6})
    class_folders(tmp / "src", {"c": 6}, seed=5)
    return tmp / "src", {}, ["mixed layouts"]


def _zip_slip(tmp: Path):
    rng = np.random.default_rng(3)
    path = tmp / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for cls in ("a", "b"):
            for i in range(3):
                zf.writestr(f"{cls}/{i}.png", gray(rng))
        zf.writestr("../evil.png", gray(rng))
    return path, {}, ["outside"]


def _csv(tmp: Path, text: str, name: str = "t.csv") -> Path:
    return write(tmp / name, text)


def _rows(n: int = 20) -> str:
    return "".join(f"{i},{i * 0.5},{'ab'[i % 2]}\n" for i in range(n))


def _csv_no_target_column(tmp: Path):
    return (
        _csv(tmp, "x,z,label\n" + _rows()),
        {"target": "diagnosis"},
        ["'diagnosis'", "x, z, label"],
    )


def _csv_target_option_missing(tmp: Path):
    return _csv(tmp, "x,z,label\n" + _rows()), {}, ["target column"]


def _csv_non_numeric(tmp: Path):
    lines = _rows().splitlines()
    lines[5] = "abc,2.5,b"  # data row 6 = line 7 of the file
    return (
        _csv(tmp, "x,z,label\n" + "\n".join(lines) + "\n"),
        {"target": "label"},
        ["'x'", "row 7", "non-numeric"],
    )


def _csv_one_class(tmp: Path):
    body = "".join(f"{i},{i},a\n" for i in range(20))
    return _csv(tmp, "x,z,label\n" + body), {"target": "label"}, ["one class", "20 rows"]


def _csv_wrong_field_count(tmp: Path):
    lines = _rows().splitlines()
    lines[3] = "1,2,a,extra"
    return (
        _csv(tmp, "x,z,label\n" + "\n".join(lines) + "\n"),
        {"target": "label"},
        ["row 5", "4 fields"],
    )


def _csv_empty(tmp: Path):
    return _csv(tmp, ""), {"target": "label"}, ["empty"]


def _csv_header_only(tmp: Path):
    return _csv(tmp, "x,z,label\n"), {"target": "label"}, ["no rows"]


def _csv_bad_split(tmp: Path):
    body = "".join(f"{i},{'ab'[i % 2]},{'train' if i % 3 else 'holdout'}\n" for i in range(20))
    return _csv(tmp, "x,label,split\n" + body), {"target": "label"}, ["row", "split"]


def _pickle_file(tmp: Path):
    return write(tmp / "data.csv", pickle.dumps({"x": [1, 2, 3]}, protocol=4)), {}, ["pickle"]


def _random_bytes(tmp: Path):
    data = b"\x17" + np.random.default_rng(0).bytes(8000)
    return write(tmp / "blob.csv", data), {"target": "label"}, ["not a dataset"]


def _npz_missing_train(tmp: Path):
    path = tmp / "x.npz"
    images, labels = npz_arrays(10, np.random.default_rng(0))
    np.savez(path, test_images=images, test_labels=labels)
    return path, {}, ["train_images"]


BAD = [
    _one_class,
    _mixed_channels,
    _not_an_image,
    _top_level_file,
    _mixed_layouts,
    _zip_slip,
    _csv_no_target_column,
    _csv_target_option_missing,
    _csv_non_numeric,
    _csv_one_class,
    _csv_wrong_field_count,
    _csv_empty,
    _csv_header_only,
    _csv_bad_split,
    _pickle_file,
    _random_bytes,
    _npz_missing_train,
]


@pytest.mark.parametrize("make", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_bad_sources_are_refused_and_store_nothing(env, tmp_path, make):
    source, options, words = make(tmp_path)
    before = blob_files(env.blob_root)
    with pytest.raises(DatasetError) as err:
        do_import(env, source, "bad", **options)
    assert err.value.status_code == 422
    for w in words:
        assert w in err.value.detail, (w, err.value.detail)
    assert row_counts(env) == (0, 0)
    assert blob_files(env.blob_root) == before
    assert not (tmp_path / "evil.png").exists()


def test_zip_file_beside_the_class_folders_is_refused(env, tmp_path):
    src = class_folders(tmp_path / "wrap", {"a": 6, "b": 6})
    write(src / "README.png", gray(np.random.default_rng(4)))
    with pytest.raises(DatasetError):
        do_import(env, zip_dir(src, tmp_path / "w.zip", "wrap/"), "wrapped")


def test_invalid_and_taken_names(env, tmp_path):
    src = class_folders(tmp_path / "src", {"a": 6, "b": 6})
    with pytest.raises(DatasetError) as err:
        do_import(env, src, "Not A Name")
    assert err.value.status_code == 422 and "name" in err.value.detail
    do_import(env, src, "taken")
    blobs = blob_files(env.blob_root)
    with pytest.raises(service.DatasetExists) as err:
        do_import(env, src, "taken")
    assert err.value.status_code == 409 and "taken" in err.value.detail
    assert row_counts(env) == (1, 12) and blob_files(env.blob_root) == blobs


def test_queries(env, tmp_path):
    ds = do_import(env, class_folders(tmp_path / "src", {"a": 12, "b": 12}), "queried")
    with env.sessions() as db:
        assert service.get(db=db, ref=ds.id).name == "queried"
        assert service.get(db=db, ref="queried").id == ds.id
        with pytest.raises(service.DatasetNotFound):
            service.get(db=db, ref="missing")
        got = service.get(db=db, ref=ds.id)
        assert service.item(db=db, ds=got, idx=0).idx == 0
        with pytest.raises(service.DatasetNotFound):
            service.item(db=db, ds=got, idx=24)
        samples = service.samples(db=db, ds=got, per_class=2)
        assert Counter((s.split, s.label) for s in samples) == {
            ("train", 0): 2,
            ("train", 1): 2,
            ("val", 0): 2,
            ("val", 1): 2,
        }


# --- CSV tables ----------------------------------------------------------------------------------


def _export_breast_cancer(dest: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "export_breast_cancer", REPO / "scripts" / "export_breast_cancer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.export(dest)


def test_breast_cancer_csv(env, tmp_path):
    path = _export_breast_cancer(tmp_path / "bc.csv")
    before = blob_files(env.blob_root)
    ds = do_import(env, path, "breast-cancer", target="diagnosis")
    assert ds.kind == "table" and ds.source_format == "csv" and ds.n_items == 569
    assert ds.classes == ["benign", "malignant"]
    columns = {c["name"]: c for c in ds.info["columns"]}
    numeric = [n for n, c in columns.items() if c["type"] == "numeric"]
    assert len(numeric) == 30 and "diagnosis" not in numeric
    assert len(ds.info["feature_columns"]) == 30 and "diagnosis" not in ds.info["feature_columns"]
    assert (
        columns["mean radius"]["min"]
        < columns["mean radius"]["mean"]
        < columns["mean radius"]["max"]
    )
    totals = {c: sum(per[c] for per in ds.counts.values()) for c in ds.classes}
    assert totals == {"benign": 357, "malignant": 212}
    assert set(ds.counts) == {"train", "val"}
    for c, n in totals.items():
        assert abs(ds.counts["val"][c] - 0.15 * n) <= 1
    assert ds.info["splits"]["validation"].startswith("made: stratified")
    # the CSV and the per-row split are stored as blobs; no items for tables
    assert env.blobs.get(ds.info["csv_blob"]) == path.read_bytes()
    split_bytes = env.blobs.get(ds.info["split_blob"])
    assert len(split_bytes) == 569
    assert Counter(SPLITS[b] for b in split_bytes) == {
        s: sum(per.values()) for s, per in ds.counts.items()
    }
    assert len(blob_files(env.blob_root) - before) == 2
    assert items(env, ds) == []
    again = do_import(env, path, "breast-cancer-2", target="diagnosis")
    assert again.content_hash == ds.content_hash


def test_csv_split_column_is_used(env, tmp_path):
    names = ["train"] * 30 + ["valid"] * 10 + ["test"] * 10
    body = "".join(
        f"{i},{i % 7 * 0.1},{'yes' if i % 2 else 'no'},{s}\n" for i, s in enumerate(names)
    )
    path = write(tmp_path / "split.csv", "f1,f2,y,split\n" + body)
    ds = do_import(env, path, "with-split", target="y")
    assert ds.counts == {
        "train": {"no": 15, "yes": 15},
        "val": {"no": 5, "yes": 5},
        "test": {"no": 5, "yes": 5},
    }
    assert ds.info["splits"]["validation"] == "from the source"
    assert "split" not in ds.info["feature_columns"] and "y" not in ds.info["feature_columns"]
    split_bytes = env.blobs.get(ds.info["split_blob"])
    assert [SPLITS[b] for b in split_bytes] == ["train"] * 30 + ["val"] * 10 + ["test"] * 10


def test_sensor_stream_split_by_whole_recordings(env, tmp_path):
    rng = np.random.default_rng(11)
    lines = ["t,ax,ay,gain,label,rec"]
    groups = []
    for r in range(12):
        label = "walk" if r % 2 else "run"
        for t in range(50):
            ax, ay = rng.normal(size=2)
            lines.append(f"{t * 0.02:.2f},{ax:.4f},{ay:.4f},1.0,{label},rec{r:02d}")
            groups.append(f"rec{r:02d}")
    path = write(tmp_path / "stream.csv", "\n".join(lines) + "\n")
    ds = do_import(env, path, "stream", target="label", time_column="t", group_column="rec")
    assert ds.n_items == 600 and ds.classes == ["run", "walk"]
    split_bytes = env.blobs.get(ds.info["split_blob"])
    assert len(split_bytes) == 600
    by_group: dict[str, set[str]] = defaultdict(set)
    for g, b in zip(groups, split_bytes, strict=True):
        by_group[g].add(SPLITS[b])
    assert all(len(s) == 1 for s in by_group.values()), by_group  # no recording is split
    val_groups = sorted(g for g, s in by_group.items() if s == {"val"})
    # stratified by the recordings' class: one of six recordings of each class
    assert len(val_groups) == 2
    assert {int(g[3:]) % 2 for g in val_groups} == {0, 1}
    assert ds.counts["val"] == {"run": 50, "walk": 50}
    assert ds.info["splits"]["validation"].endswith("whole groups")
    assert ds.info["group_column"] == "rec" and ds.info["time_column"] == "t"
    assert set(ds.info["feature_columns"]) == {"ax", "ay", "gain"}
    constant = [w for w in ds.info["warnings"] if "constant" in w]
    assert constant and "gain" in constant[0] and "ax" not in constant[0]
