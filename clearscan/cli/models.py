"""`clearscan models ...`: import, list, inspect, activate, roll back, export and remove model
versions (works on the data dir directly; a running server sees changes within a second)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from clearscan.cli.common import DataDirOpt, cli_context, console, db_session, fail, load_settings
from clearscan.errors import ClearScanError
from clearscan.registry import service
from clearscan.registry.packaging import OnnxFlags
from clearscan.registry.routing import ModelRegistry
from clearscan.registry.store import ModelStore

app = typer.Typer(
    help="Manage model versions: import, activate, roll back, export, remove.", no_args_is_help=True
)


@contextmanager
def _registry(data_dir: Path | None) -> Iterator[tuple[Session, ModelRegistry, ModelStore]]:
    from clearscan.bootstrap import build_registry, model_store

    settings = load_settings(data_dir)
    with db_session(settings) as db:
        registry = build_registry(settings, sessions=sessionmaker(bind=db.get_bind()))
        yield db, registry, model_store(settings)


def _split_ref(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition(":")
    return name, version or None


@app.command("import")
def import_(
    path: Annotated[
        Path,
        typer.Argument(help="Package folder, package .zip, or a bare .onnx or TorchScript file."),
    ],
    name: Annotated[
        str | None, typer.Option(help="Model name (bare .onnx or TorchScript file).")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Semantic version (bare .onnx or TorchScript file).")
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(help="Comma-separated class labels (bare .onnx or TorchScript file)."),
    ] = None,
    channels: Annotated[
        int | None, typer.Option(help="Input channels, 1 or 3 (bare .onnx or TorchScript file).")
    ] = None,
    input_size: Annotated[
        tuple[int, int] | None,
        typer.Option(help="Input height and width (bare .onnx or TorchScript file)."),
    ] = None,
    mean: Annotated[str | None, typer.Option(help="Normalisation mean, comma-separated.")] = None,
    std: Annotated[str | None, typer.Option(help="Normalisation std, comma-separated.")] = None,
    modality: Annotated[
        str | None, typer.Option(help="Modality the model is for, e.g. XR.")
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Import a model package or a bare ONNX file as a new, inactive version."""
    try:
        flags = OnnxFlags(
            name=name,
            version=version,
            labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else None,
            channels=channels,
            input_size=input_size,
            mean=[float(x) for x in mean.split(",")] if mean else None,
            std=[float(x) for x in std.split(",")] if std else None,
            modality=modality,
        )
    except ValueError:
        raise fail("--mean/--std: comma-separated numbers expected", 2) from None
    with _registry(data_dir) as (db, registry, store):
        try:
            m = service.import_path(
                db=db, ctx=cli_context(), store=store, registry=registry, source=path, flags=flags
            )
        except ClearScanError as exc:
            raise fail(exc.detail) from None
        serving = registry.is_active(m.name, m.version)
    if serving:
        console.print(f"imported [bold]{m.ref}[/bold]: the first version of {m.name}, serving now")
    else:
        console.print(
            f"imported [bold]{m.ref}[/bold] (inactive; `clearscan models activate "
            f"{m.name} {m.version}` to serve it)"
        )


@app.command("list")
def list_(data_dir: DataDirOpt = None) -> None:
    """List models with their serving version."""
    with _registry(data_dir) as (_, registry, _s):
        table = Table("name", "active version", "versions", "task", "labels", "status")
        for e in registry.entries(include_inactive=True):
            m = e.manifest
            status = registry.status(e)
            table.add_row(
                m.name,
                m.version if status != "inactive" else "none (activate one)",
                str(len(registry.versions(m.name))),
                m.task,
                ", ".join(m.labels),
                registry.status(e),
            )
    console.print(table)


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION")], data_dir: DataDirOpt = None
) -> None:
    """Show a model version's manifest facts and model card."""
    name, version = _split_ref(ref)
    with _registry(data_dir) as (_, registry, _s):
        try:
            e = registry.version(name, version) if version else registry.get(name)
        except ClearScanError as exc:
            raise fail(exc.detail) from None
        m = e.manifest
        console.print(f"[bold]{m.ref}[/bold]  {registry.status(e)}  ({e.source})")
        console.print(
            f"task {m.task}; labels {', '.join(m.labels)}; modality {m.modality}; "
            f"input {m.image.channels}x{m.image.height}x{m.image.width}"
        )
        if e.error:
            console.print(f"[red]unavailable:[/red] {e.error}")
        if m.intended_use:
            console.print(f"intended use: {m.intended_use}")
        card = e.model_card
        if card:
            console.print(card)


@app.command("versions")
def versions(name: str, data_dir: DataDirOpt = None) -> None:
    """List every version of a model."""
    with _registry(data_dir) as (_, registry, _s):
        try:
            rows = registry.versions(name)
        except ClearScanError as exc:
            raise fail(exc.detail) from None
        table = Table("version", "status", "source", "weights sha256")
        for e in rows:
            table.add_row(
                e.manifest.version,
                registry.status(e),
                e.source,
                e.manifest.files.get(e.manifest.weights, "")[:16],
            )
    console.print(table)


@app.command("activate")
def activate(name: str, version: str, data_dir: DataDirOpt = None) -> None:
    """Make VERSION serve NAME (the previous one is kept for rollback)."""
    with _registry(data_dir) as (db, registry, _s):
        try:
            service.activate(
                db=db, ctx=cli_context(), registry=registry, name=name, version=version
            )
        except ClearScanError as exc:
            raise fail(exc.detail) from None
    console.print(f"{name}:{version} is now active")


@app.command("rollback")
def rollback(name: str, data_dir: DataDirOpt = None) -> None:
    """Re-activate the previously active version of NAME."""
    with _registry(data_dir) as (db, registry, _s):
        try:
            old, new = service.rollback(db=db, ctx=cli_context(), registry=registry, name=name)
        except ClearScanError as exc:
            raise fail(exc.detail) from None
    console.print(f"{name}: rolled back from {old} to {new}")


@app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION")],
    path: Annotated[Path, typer.Argument(help="A .zip file or a folder to write it into.")],
    data_dir: DataDirOpt = None,
) -> None:
    """Write a model version as a package .zip (importable elsewhere)."""
    name, version = _split_ref(ref)
    with _registry(data_dir) as (_, registry, store):
        try:
            e = registry.version(name, version) if version else registry.get(name)
        except ClearScanError as exc:
            raise fail(exc.detail) from None
        out = store.export(e.package_dir, path)
    console.print(f"wrote {out}")


@app.command("remove")
def remove(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")], data_dir: DataDirOpt = None
) -> None:
    """Remove an imported, inactive version."""
    name, version = _split_ref(ref)
    if not version:
        raise fail("give NAME:VERSION", 2)
    with _registry(data_dir) as (db, registry, store):
        try:
            service.remove(
                db=db, ctx=cli_context(), store=store, registry=registry, name=name, version=version
            )
        except ClearScanError as exc:
            raise fail(exc.detail) from None
    console.print(f"removed {name}:{version}")
