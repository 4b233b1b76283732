"""`clearscan datasets ...`: import a dataset (image folder or .zip of one, MedMNIST .npz, CSV),
list them, show one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from clearscan.cli.common import (
    DataDirOpt,
    cli_context,
    console,
    db_session,
    fail,
    load_settings,
    open_blobs,
)
from clearscan.datasets import service
from clearscan.datasets.importers import DatasetError
from clearscan.datasets.schemas import DatasetPublic

app = typer.Typer(help="Datasets for training and evaluation.", no_args_is_help=True)


@app.command("import")
def import_(
    path: Annotated[
        Path,
        typer.Argument(
            help="Folder of <class>/ (or <split>/<class>/) images, a .zip of one, "
            "a MedMNIST .npz, or a CSV table."
        ),
    ],
    name: Annotated[str, typer.Option(help="Dataset name (lower-case, unique).")],
    target: Annotated[str | None, typer.Option(help="CSV: the class column.")] = None,
    time_column: Annotated[
        str | None, typer.Option(help="CSV sensor streams: the time column.")
    ] = None,
    group_column: Annotated[
        str | None, typer.Option(help="CSV sensor streams: one recording per group.")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help=".npz: class names for labels 0, 1, ... (a,b,...).")
    ] = None,
    license: Annotated[
        str | None,
        typer.Option(
            "--license",
            help="Licence and attribution of the data (copied into the "
            "model cards of models trained on it).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the dataset as JSON.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Import a dataset (checked whole before anything is stored; immutable afterwards)."""
    if not path.exists():
        raise fail(f"{path} does not exist")
    settings = load_settings(data_dir)
    options = service.ImportOptions(
        name=name,
        target=target,
        time_column=time_column,
        group_column=group_column,
        labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else None,
        license=license,
    )
    _import(settings, path, options, as_json)


def _import(settings: Any, path: Path, options: service.ImportOptions, as_json: bool) -> None:
    with db_session(settings) as db:
        try:
            with console.status("importing (reading and checking every item)"):
                ds = service.import_dataset(
                    db=db,
                    blobs=open_blobs(settings),
                    ctx=cli_context(),
                    source=path,
                    options=options,
                    limits=settings.image_limits(),
                    max_bytes=int(settings.max_dataset_upload_mb * 2**20),
                    deid=settings.deid_policy(),
                )
        except DatasetError as exc:
            raise fail(exc.detail) from None
        _print(DatasetPublic.of(ds), as_json)


@app.command("list")
def list_(data_dir: DataDirOpt = None) -> None:
    """List datasets, newest first."""
    settings = load_settings(data_dir)
    with db_session(settings) as db:
        rows, _ = service.list_datasets(db=db, limit=1000, offset=0)
        table = Table("name", "kind", "items", "classes", "hash", "created")
        for d in rows:
            table.add_row(
                d.name,
                f"{d.kind} ({d.source_format})",
                str(d.n_items),
                ", ".join(d.classes[:6]) + (" ..." if len(d.classes) > 6 else ""),
                d.content_hash[:12],
                d.created_at.strftime("%Y-%m-%d %H:%M"),
            )
        console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Dataset name or id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Class balance per split, sizes and warnings of one dataset."""
    settings = load_settings(data_dir)
    with db_session(settings) as db:
        try:
            ds = service.get(db=db, ref=name)
        except DatasetError as exc:
            raise fail(exc.detail) from None
        _print(DatasetPublic.of(ds), as_json)


@app.command("synth-angio")
def synth_angio(
    n: Annotated[int, typer.Option("--n", help="Number of images.")],
    seed: Annotated[
        int, typer.Option(help="Base seed; image i uses seed * 100003 + i (reproducible alone).")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (must not exist or be empty).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="Also import the images as a segmentation dataset of this name (labels "
            "background, vessel; the true stenoses kept with it)."
        ),
    ] = None,
    size: Annotated[int, typer.Option(help="Image side in pixels (128-2048).")] = 512,
    as_json: Annotated[bool, typer.Option("--json", help="Print the dataset as JSON.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Write synthetic X-ray coronary angiograms with vessel masks and known stenoses, to a
    folder (--out), as a dataset (--name), or both."""
    import tempfile

    from clearscan.datasets import synth_angio as synth
    from clearscan.errors import ClearScanError

    if out is None and name is None:
        raise fail("give --out DIR, --name NAME, or both")
    settings = load_settings(data_dir) if name else None
    if settings is not None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=".synth-", dir=settings.data_dir if settings else None
    ) as tmp:
        target = out or Path(tmp) / "synth"
        try:
            with console.status(f"generating {n} synthetic angiograms") as status:
                rows = synth.write_dataset(
                    target,
                    n=n,
                    seed=seed,
                    size=size,
                    progress=lambda i: status.update(f"generating: {i}/{n}"),
                )
        except ClearScanError as exc:
            raise fail(exc.detail) from None
        if not as_json:
            console.print(
                f"wrote {n} images, {n} masks and {len(rows)} stenoses"
                + (f" to {out}" if out else "")
                + f" (generator {synth.GENERATOR_VERSION}; synthetic, not clinical images)"
            )
        if settings is not None and name is not None:
            options = service.ImportOptions(
                name=name,
                labels=["background", "vessel"],
                license="synthetic images made by ClearScan's generator: no licence needed",
            )
            _import(settings, target, options, as_json)


def _print(d: DatasetPublic, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(d.model_dump(mode="json")))
        return
    console.print(f"[bold]{d.name}[/bold]  {d.kind} ({d.source_format}), {d.n_items} items")
    console.print(f"hash {d.content_hash}")
    table = Table("split", *d.classes, "total")
    for split, per in d.counts.items():
        table.add_row(split, *(str(per.get(c, 0)) for c in d.classes), str(sum(per.values())))
    console.print(table)
    for w in d.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
