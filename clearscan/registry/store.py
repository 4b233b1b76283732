"""The model store: immutable `<root>/<name>/<version>/` folders.

An import is staged in a hidden folder, validated (manifest, sha256 of every file, no pickles,
the weights load in ONNX Runtime and agree with the manifest), then renamed into place in one
step: a failed or interrupted import leaves nothing behind, and an existing version is never
overwritten."""

from __future__ import annotations

import hashlib
import json
import os
import pickletools
import re
import shutil
import stat
import tempfile
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from clearscan.inference.runtime import ModelLoadError, create_model
from clearscan.registry.manifest import (
    MANIFEST_FILE,
    ManifestError,
    ModelManifest,
    load_manifest,
    verify_files,
)

MAX_FILES = 256
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ImportRejected(ValueError):
    """The package cannot be imported; the message names the problem. Nothing was stored."""

    status_code = 422


class VersionExists(ImportRejected):
    status_code = 409


@dataclass(frozen=True)
class OnnxFlags:
    """Manifest fields for a bare .onnx import (the rest comes from the graph and defaults)."""

    name: str | None = None
    version: str | None = None
    labels: list[str] | None = None
    channels: int | None = None
    input_size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    modality: str | None = None


PICKLE_SNIFF_BYTES = 4096  # how much of each file the protocol 0/1 opcode parse judges


def _looks_like_pickle(head: bytes) -> bool:
    """Pickle protocols 2-5 start with PROTO (0x80) and the protocol number. Protocols 0 and 1
    have no header: ``head`` (a file's first PICKLE_SNIFF_BYTES) counts as a pickle when it
    parses as pickle opcodes either to a STOP on its last byte (the whole file) or to where the
    head was cut. pickletools only parses; nothing is unpickled. Text and binary formats fail
    that parse within a few bytes (random bytes: 0 of 100,000). torch.save zips hold a data.pkl,
    which _check_zip catches by name."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    ops, end = 0, 0
    with warnings.catch_warnings():  # string opcodes decoded by pickletools may warn
        warnings.simplefilter("ignore")
        try:
            for op, _arg, pos in pickletools.genops(head):
                ops, end = ops + 1, pos or 0
                if op.name == "STOP":
                    return ops >= 3 and end == len(head) - 1
        except Exception:  # noqa: S110 - not a pickle, or the head cut one short: judge below
            pass
    return len(head) >= PICKLE_SNIFF_BYTES and end >= len(head) - 256


def _refuse_pickle(name: str, head: bytes) -> None:
    suffix = Path(name).suffix.lower()
    if suffix in {".pkl", ".pickle", ".joblib"} or _looks_like_pickle(head):
        raise ImportRejected(
            f"{name}: pickle files are refused (unpickling runs arbitrary code); "
            "export the model to ONNX, or scikit-learn models with skops"
        )


def _check_zip(zf: zipfile.ZipFile, *, max_bytes: int) -> list[zipfile.ZipInfo]:
    members = [m for m in zf.infolist() if not m.is_dir()]
    if len(members) > MAX_FILES:
        raise ImportRejected(f"zip has {len(members)} files; at most {MAX_FILES} are allowed")
    total = 0
    for m in members:
        name = m.filename
        parts = Path(name).parts
        if name.startswith(("/", "\\")) or ".." in parts or ":" in name or "\\" in name:
            raise ImportRejected(f"zip entry {name!r} points outside the package")
        if stat.S_ISLNK(m.external_attr >> 16):
            raise ImportRejected(f"zip entry {name!r} is a symbolic link")
        if Path(name).name.endswith(".pkl") or Path(name).suffix.lower() in {".pickle", ".joblib"}:
            _refuse_pickle(name, b"")
        total += m.file_size
        if total > max_bytes:
            raise ImportRejected(
                f"zip unpacks to more than {max_bytes / 2**20:.0f} MB; refusing (zip bomb guard)"
            )
    return members


def _extract_zip(path: Path, dest: Path, *, max_bytes: int) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImportRejected(f"not a readable zip file: {exc}") from None
    with zf:
        members = _check_zip(zf, max_bytes=max_bytes)
        # A package zip may hold its files at the top or inside one folder.
        tops = {Path(m.filename).parts[0] for m in members}
        strip = len(tops) == 1 and not any(m.filename == MANIFEST_FILE for m in members)
        written = 0
        for m in members:
            parts = Path(m.filename).parts[1:] if strip else Path(m.filename).parts
            if not parts:
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, target.open("wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:  # sizes in the zip header can lie
                        raise ImportRejected("zip unpacks to more than its header says; refusing")
                    out.write(chunk)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_archive_kind(path: Path) -> str | None:
    """'torchscript' for a torch.jit.save archive, 'checkpoint' for a torch.save zip (a pickle
    of arbitrary Python objects), None for any other zip (a package)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1:
        return None
    top = next(iter(tops))
    if f"{top}/data.pkl" not in names:
        return None
    if any(n.startswith(f"{top}/code/") for n in names) and f"{top}/constants.pkl" in names:
        return "torchscript"
    return "checkpoint"


def _manifest_for_torchscript(path: Path, flags: OnnxFlags, staging: Path) -> None:
    """Build manifest.json for a bare TorchScript file from the flags (it carries no metadata)."""
    missing = [
        flag
        for flag, value in (("--labels", flags.labels), ("--input-size", flags.input_size))
        if not value
    ]
    if missing:
        raise ImportRejected(f"a bare TorchScript file needs {' and '.join(missing)}")
    assert flags.labels is not None and flags.input_size is not None
    shutil.copyfile(path, staging / "model.pt")
    name = flags.name or path.stem.lower()
    manifest = {
        "name": re.sub(r"[^a-z0-9._-]", "-", name.lower()),
        "version": flags.version or "1.0.0",
        "runtime": "torchscript",
        "weights": "model.pt",
        "labels": flags.labels,
        "modality": flags.modality,
        "input": {
            "channels": flags.channels or 1,
            "height": flags.input_size[0],
            "width": flags.input_size[1],
            "mean": flags.mean or [0.0],
            "std": flags.std or [1.0],
        },
        "files": {"model.pt": _sha256(staging / "model.pt")},
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def _manifest_for_onnx(path: Path, flags: OnnxFlags, staging: Path) -> None:
    """Build manifest.json for a bare ONNX file from the flags and the graph's metadata."""
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise ImportRejected(f"{path.name} is not a readable ONNX model: {exc}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    graph_in = model.graph.input[0] if model.graph.input else None
    dims = [d.dim_value for d in graph_in.type.tensor_type.shape.dim] if graph_in else []
    labels = flags.labels or [s for s in meta.get("labels", "").split(",") if s]
    if not labels:
        raise ImportRejected("labels: give --labels a,b,... (the ONNX metadata has none)")
    size = flags.input_size or (
        (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else None
    )
    if size is None:
        raise ImportRejected("input: give --input-size H W (the graph's input size is dynamic)")
    channels = flags.channels or (dims[1] if len(dims) == 4 and dims[1] in (1, 3) else 1)
    name = flags.name or meta.get("name") or path.stem.lower()
    version = flags.version or meta.get("version") or "1.0.0"
    shutil.copyfile(path, staging / "model.onnx")
    manifest = {
        "name": re.sub(r"[^a-z0-9._-]", "-", name.lower()),
        "version": version,
        "weights": "model.onnx",
        "labels": labels,
        "modality": flags.modality or meta.get("modality"),
        "input": {
            "name": graph_in.name if graph_in else "image",
            "channels": channels,
            "height": size[0],
            "width": size[1],
            "mean": flags.mean or [0.0],
            "std": flags.std or [1.0],
        },
        "output": {"name": model.graph.output[0].name if model.graph.output else "logits"},
        "description": meta.get("description"),
        "files": {"model.onnx": _sha256(staging / "model.onnx")},
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


class ModelStore:
    def __init__(self, root: Path, *, max_package_bytes: int = 4 * 2**30) -> None:
        self.root = root
        self.max_package_bytes = max_package_bytes

    def version_dir(self, name: str, version: str) -> Path:
        if not _SAFE_NAME.match(name) or not _SAFE_NAME.match(version):
            raise ImportRejected(f"invalid model reference {name}:{version}")
        return self.root / name / version

    def package_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(
            v
            for n in self.root.iterdir()
            if n.is_dir() and not n.name.startswith(".")
            for v in n.iterdir()
            if v.is_dir() and not v.name.startswith(".")
        )

    def import_package(self, source: Path, *, flags: OnnxFlags | None = None) -> ModelManifest:
        """Import a package folder, a package .zip or a bare .onnx file. Returns its manifest."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".incoming-{uuid.uuid4().hex[:8]}-", dir=self.root))
        try:
            self._stage(source, staging, flags or OnnxFlags())
            manifest = self._validate(staging)
            final = self.version_dir(manifest.name, manifest.version)
            if final.exists():
                raise VersionExists(f"{manifest.ref} already exists; versions are immutable")
            final.parent.mkdir(parents=True, exist_ok=True)
            _freeze(staging)
            os.rename(staging, final)
            return manifest
        finally:
            if staging.exists():
                _thaw(staging)
                shutil.rmtree(staging, ignore_errors=True)

    def _stage(self, source: Path, staging: Path, flags: OnnxFlags) -> None:
        if source.is_dir():
            files = [p for p in source.rglob("*") if p.is_file() or p.is_symlink()]
            if len(files) > MAX_FILES:
                raise ImportRejected(f"package has more than {MAX_FILES} files")
            for p in files:
                if p.is_symlink():
                    raise ImportRejected(f"{p.name} is a symbolic link")
                rel = p.relative_to(source)
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, staging / rel)
            return
        if not source.is_file():
            raise ImportRejected(f"{source} does not exist")
        with source.open("rb") as f:
            head = f.read(PICKLE_SNIFF_BYTES)
        _refuse_pickle(source.name, head)
        torch_kind = _torch_archive_kind(source) if head[:4] == b"PK\x03\x04" else None
        if torch_kind == "checkpoint":
            raise ImportRejected(
                f"{source.name} is a torch.save checkpoint (a pickle: loading it runs arbitrary "
                "code); save a TorchScript module with torch.jit.save, or export to ONNX"
            )
        if torch_kind == "torchscript":
            _manifest_for_torchscript(source, flags, staging)
        elif head[:4] == b"PK\x03\x04":
            _extract_zip(source, staging, max_bytes=self.max_package_bytes)
        else:
            _manifest_for_onnx(source, flags, staging)

    def _validate(self, staging: Path) -> ModelManifest:
        try:
            manifest = load_manifest(staging)
        except ManifestError as exc:
            raise ImportRejected(str(exc).replace(staging.name + ": ", "")) from None
        for p in staging.rglob("*"):
            if p.is_file():
                with p.open("rb") as f:
                    head = f.read(PICKLE_SNIFF_BYTES)
                _refuse_pickle(p.name, head)
                if head[:4] == b"PK\x03\x04" and _torch_archive_kind(p) == "checkpoint":
                    raise ImportRejected(
                        f"{p.name} is a torch.save checkpoint (a pickle); packages carry "
                        "TorchScript (torch.jit.save), ONNX or skops files"
                    )
        listed = set(manifest.files) | {MANIFEST_FILE}
        extra = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        unlisted = [f for f in extra if f not in listed]
        if unlisted:
            raise ImportRejected(f"files not listed in the manifest's sha256 list: {unlisted}")
        try:
            verify_files(staging, manifest)
            model = create_model(staging, manifest)
            model.load()  # the weights load and agree with the manifest
            model.close()
        except (ManifestError, ModelLoadError) as exc:
            raise ImportRejected(str(exc)) from None
        return manifest

    def export(self, package_dir: Path, dest: Path) -> Path:
        """Write the package as a .zip (files at the top level)."""
        dest = (
            dest
            if dest.suffix == ".zip"
            else dest / f"{package_dir.parent.name}-{package_dir.name}.zip"
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(package_dir.rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(package_dir).as_posix())
        return dest

    def remove(self, name: str, version: str) -> None:
        path = self.version_dir(name, version)
        if not path.is_dir():
            raise ImportRejected(f"{name}:{version} is not in the model store")
        trash = self.root / f".removing-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)  # atomic: the version disappears at once
        _thaw(trash)
        shutil.rmtree(trash, ignore_errors=True)


def _freeze(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o444)


def _thaw(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
