"""`clearscan predict IMAGE...`: offline analysis with the installed models, no server."""

from __future__ import annotations

import json
import re
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from clearscan.cli.common import (
    DataDirOpt,
    console,
    db_session,
    err_console,
    fail,
    load_settings,
)
from clearscan.errors import ClearScanError
from clearscan.inference.tasks import ImageClassificationTask, ImageRequest


def _safe_stem(path: Path, index: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:64].strip("._") or "image"
    return f"{index:04d}-{stem}"


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files: PNG, JPEG, DICOM, NIfTI.")],
    model: Annotated[
        str | None, typer.Option(help="Model name (default: the configured default).")
    ] = None,
    no_explain: Annotated[
        bool, typer.Option("--no-explain", help="Skip the Grad-CAM heatmap.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Write <n>-<name>.heatmap.png and .json per image here.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per file.")
    ] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Analyse images offline and print the probabilities (and write heatmaps with --out)."""
    from sqlalchemy.orm import sessionmaker

    from clearscan.bootstrap import build_registry

    settings = load_settings(data_dir)
    stack = ExitStack()
    # the roll-out state (which version is active) lives in the database: honour it offline too
    db = stack.enter_context(db_session(settings))
    registry = build_registry(settings, sessionmaker(bind=db.get_bind()))
    try:
        entry = registry.get(model or settings.default_model)
        runner = stack.enter_context(registry.lease(entry))  # loaded while the files run
        classify = ImageClassificationTask(runner)
    except ClearScanError as exc:
        raise fail(str(exc)) from None
    limits = settings.image_limits()
    if out:
        out.mkdir(parents=True, exist_ok=True)
    failures = 0
    show_bar = len(images) > 1
    with (
        stack,
        Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            disable=not show_bar,
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("analysing", total=len(images))
        for i, path in enumerate(images, 1):
            result: dict[str, Any] = {"file": str(path)}
            try:
                data = path.read_bytes()
                request = ImageRequest(uploads=[data], limits=limits, explain=not no_explain)
                a = classify(request).items[0]
            except OSError as exc:
                result.update(error=f"cannot read file: {exc.strerror}", status=400)
            except ClearScanError as exc:
                result.update(error=exc.detail, status=exc.status_code)
            else:
                m = entry.manifest
                heat_path = None
                if out and a.heatmap_png is not None:
                    heat_path = out / f"{_safe_stem(path, i)}.heatmap.png"
                    heat_path.write_bytes(a.heatmap_png)
                result.update(
                    id=None,
                    image_id=None,
                    model={"name": m.name, "version": m.version},
                    labels=m.labels,
                    probabilities=a.probabilities,
                    top_label=a.top_label,
                    out_of_domain=None if a.ood_score is None else a.ood_score > 1.0,
                    ood_score=a.ood_score,
                    heatmap_url=heat_path.resolve().as_uri() if heat_path else None,
                    heatmap_box=list(a.box) if a.heatmap_png else None,
                    inference_ms=a.inference_ms,
                )
                if out:
                    (out / f"{_safe_stem(path, i)}.json").write_text(json.dumps(result, indent=2))
            failures += "error" in result
            _emit(result, as_json)
            progress.advance(task)
    if failures:
        raise typer.Exit(1)


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        return
    if "error" in result:
        err_console.print(f"[red]{result['file']}[/red]: {result['error']} ({result['status']})")
        return
    probs = ", ".join(
        f"{lab} {p:.3f}" for lab, p in zip(result["labels"], result["probabilities"], strict=True)
    )
    console.print(
        f"{result['file']}: [bold]{result['top_label']}[/bold] ({probs}) "
        + ("[yellow]OUT OF DOMAIN[/yellow] " if result.get("out_of_domain") else "")
        + f"[dim]{result['model']['name']}:{result['model']['version']}, "
        f"{result['inference_ms']:.1f} ms[/dim]"
    )
