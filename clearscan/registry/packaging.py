"""What a file must be to enter the model store, and how a bare model file becomes a package.

- A package folder or ``.zip`` holds ``manifest.json`` and the files it lists. Zips are checked
  before anything is written: no entry outside the package, no symbolic link, at most MAX_FILES
  files, and an unpacked size bound (the header's and the bytes actually inflated).
- A bare ONNX file or TorchScript archive (``torch.jit.save``) is wrapped: its manifest is built
  from the flags given with it (and, for ONNX, from the graph's metadata and input shape).
- Pickles are refused wherever they are (unpickling runs arbitrary code): by suffix, by the
  protocol 2-5 header, by an opcode parse for the headerless protocols 0 and 1, and the
  ``data.pkl`` of a ``torch.save`` checkpoint zip.

Every refusal is an ImportRejected (422) naming the file and the problem."""

from __future__ import annotations

import hashlib
import json
import pickletools
import shutil
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx

from clearscan.inference.manifest import MANIFEST_FILE
from clearscan.registry.errors import ImportRejected
from clearscan.registry.ref import FIRST_VERSION, name_from

__all__ = [
    "MAX_FILES",
    "PICKLE_SNIFF_BYTES",
    "OnnxFlags",
    "check_files",
    "looks_like_pickle",
    "refuse_pickle",
    "torch_archive_kind",
    "unpack",
]

MAX_FILES = 256
PICKLE_SNIFF_BYTES = 4096  # how much of each file the protocol 0/1 opcode parse judges
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib"}


@dataclass(frozen=True)
class OnnxFlags:
    """Manifest fields for a bare .onnx or TorchScript import (the rest comes from the graph and
    defaults)."""

    name: str | None = None
    version: str | None = None
    labels: list[str] | None = None
    channels: int | None = None
    input_size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    modality: str | None = None


def unpack(source: Path, staging: Path, flags: OnnxFlags, *, max_bytes: int) -> None:
    """Write the package that the file `source` is into the empty folder `staging`: a package
    zip is extracted, a bare ONNX or TorchScript file is wrapped with a manifest built from
    `flags`. Pickles and torch.save checkpoints are refused before anything is written."""
    with source.open("rb") as f:
        head = f.read(PICKLE_SNIFF_BYTES)
    refuse_pickle(source.name, head)
    torch_kind = torch_archive_kind(source) if head[:4] == ZIP_MAGIC else None
    if torch_kind == "checkpoint":
        raise ImportRejected(
            f"{source.name} is a torch.save checkpoint (a pickle: loading it runs arbitrary "
            "code); save a TorchScript module with torch.jit.save, or export to ONNX"
        )
    if torch_kind == "torchscript":
        _wrap_torchscript(source, flags, staging)
    elif head[:4] == ZIP_MAGIC:
        _extract_zip(source, staging, max_bytes=max_bytes)
    else:
        _wrap_onnx(source, flags, staging)


def check_files(package_dir: Path) -> None:
    """Refuse a package holding a pickle or a torch.save checkpoint, under any name."""
    for p in package_dir.rglob("*"):
        if p.is_file():
            with p.open("rb") as f:
                head = f.read(PICKLE_SNIFF_BYTES)
            refuse_pickle(p.name, head)
            if head[:4] == ZIP_MAGIC and torch_archive_kind(p) == "checkpoint":
                raise ImportRejected(
                    f"{p.name} is a torch.save checkpoint (a pickle); packages carry "
                    "TorchScript (torch.jit.save), ONNX or skops files"
                )


def looks_like_pickle(head: bytes) -> bool:
    """Pickle protocols 2-5 start with PROTO (0x80) and the protocol number. Protocols 0 and 1
    have no header: ``head`` (a file's first PICKLE_SNIFF_BYTES) counts as a pickle when it
    parses as pickle opcodes either to a STOP on its last byte (the whole file) or to where the
    head was cut. pickletools only parses; nothing is unpickled. Text and binary formats fail
    that parse within a few bytes (random bytes: 0 of 100,000). torch.save zips hold a data.pkl,
    which the zip checks catch by name."""
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


def refuse_pickle(name: str, head: bytes) -> None:
    """ImportRejected when the file `name` (first bytes `head`) is a pickle by suffix or
    content."""
    if Path(name).suffix.lower() in PICKLE_SUFFIXES or looks_like_pickle(head):
        raise ImportRejected(
            f"{name}: pickle files are refused (unpickling runs arbitrary code); "
            "export the model to ONNX, or scikit-learn models with skops"
        )


def torch_archive_kind(path: Path) -> Literal["torchscript", "checkpoint"] | None:
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
        if Path(name).suffix.lower() in PICKLE_SUFFIXES:
            refuse_pickle(name, b"")
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


def _wrap_torchscript(path: Path, flags: OnnxFlags, staging: Path) -> None:
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
    manifest = {
        "name": name_from(flags.name or path.stem),
        "version": flags.version or FIRST_VERSION,
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


def _wrap_onnx(path: Path, flags: OnnxFlags, staging: Path) -> None:
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
    name = flags.name or meta.get("name") or path.stem
    version = flags.version or meta.get("version") or FIRST_VERSION
    shutil.copyfile(path, staging / "model.onnx")
    manifest = {
        "name": name_from(name),
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
