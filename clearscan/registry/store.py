"""The model store: immutable `<root>/<name>/<version>/` folders.

An import is staged in a hidden folder (a package folder copied, a zip or bare model file
unpacked by :mod:`clearscan.registry.packaging`), validated (manifest, sha256 of every file, no
pickles, the weights load and agree with the manifest), frozen read-only, then renamed into place
in one step: a failed or interrupted import leaves nothing behind, and an existing version is
never overwritten."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path

from clearscan.inference.manifest import (
    MANIFEST_FILE,
    ManifestError,
    ModelManifest,
    load_manifest,
    verify_files,
)
from clearscan.inference.runtimes import create_model
from clearscan.inference.types import ModelLoadError
from clearscan.registry.errors import ImportRejected, InvalidModelRef, VersionExists
from clearscan.registry.packaging import MAX_FILES, OnnxFlags, check_files, unpack
from clearscan.registry.ref import ModelRef

__all__ = ["ImportRejected", "ModelStore", "OnnxFlags", "VersionExists"]


class ModelStore:
    def __init__(self, root: Path, *, max_package_bytes: int = 4 * 2**30) -> None:
        self.root = root
        self.max_package_bytes = max_package_bytes

    def version_dir(self, name: str, version: str) -> Path:
        try:
            ref = ModelRef(name, version)
        except InvalidModelRef:
            raise ImportRejected(f"invalid model reference {name}:{version}") from None
        return self.root / ref.name / ref.version

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

    def versions(self, name: str) -> list[str]:
        """The folder names under `name` (its stored versions), in no particular order."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        return [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def import_package(self, source: Path, *, flags: OnnxFlags | None = None) -> ModelManifest:
        """Import a package folder, a package .zip or a bare .onnx or TorchScript file. Returns
        its manifest."""
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
        unpack(source, staging, flags, max_bytes=self.max_package_bytes)

    def _validate(self, staging: Path) -> ModelManifest:
        try:
            manifest = load_manifest(staging)
        except ManifestError as exc:
            raise ImportRejected(str(exc).replace(staging.name + ": ", "")) from None
        check_files(staging)
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
