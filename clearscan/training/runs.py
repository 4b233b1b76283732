"""Training runs: the `train` job. The request is checked before it is queued; the run picks the
trainer of the dataset's kind (clearscan.training.trainers: images with PyTorch, tables with
scikit-learn), which reads the data through the serving preprocessing and fits a model, writes
it as a package (weights, model card, metrics, dataset hash, recipe, out-of-domain reference),
and the package is imported into the model store as a new, inactive version in one atomic step
(a run that fails or is cancelled registers nothing)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Final

from sqlalchemy.orm import Session, sessionmaker

from clearscan.audit.service import RequestContext
from clearscan.datasets import service as datasets
from clearscan.datasets.importers import DatasetError
from clearscan.datasets.models import Dataset
from clearscan.errors import Unprocessable
from clearscan.inference.manifest import MANIFEST_FILE, ManifestError, ModelManifest, load_manifest
from clearscan.jobs.service import JobCancelled, JobContext, JobError
from clearscan.registry import service as registry_service
from clearscan.registry.ref import ModelRef, valid_name
from clearscan.registry.store import ModelStore
from clearscan.storage.base import BlobStore
from clearscan.training.trainers import TRAINERS, TrainJob, TrainRequest, trainer_for

__all__ = ["TRAIN_KIND", "TrainRequest", "TrainingError", "check_request", "run_training"]

TRAIN_KIND: Final = "train"


class TrainingError(JobError, Unprocessable):
    """A training request that cannot run, or a run that cannot finish (422)."""

    status_code = 422


def check_request(db: Session, req: TrainRequest) -> Dataset:
    """Refuse a request that cannot run, before it is queued (422 naming the problem)."""
    try:
        ds = datasets.get(db=db, ref=req.dataset)
    except DatasetError as exc:
        raise TrainingError(exc.detail) from None
    trainer = TRAINERS.get(ds.kind)
    if trainer is None:
        raise TrainingError(f"datasets of kind {ds.kind!r} cannot be trained")
    names = trainer.recipes
    if req.recipe is not None and req.recipe not in names:
        raise TrainingError(
            f"recipe {req.recipe!r} unknown for {ds.kind} datasets; choose one of "
            f"{', '.join(names)}"
        )
    if ds.kind == "images" and (req.window or req.step):
        raise TrainingError("window and step apply to sensor-stream tables only")
    if not trainer.available():
        raise TrainingError(trainer.missing)
    if req.window is not None and not 4 <= req.window <= 100_000:
        raise TrainingError("window must be between 4 and 100000 samples")
    if req.step is not None and not 1 <= req.step <= 100_000:
        raise TrainingError("step must be between 1 and 100000 samples")
    if req.epochs is not None and not 1 <= req.epochs <= 500:
        raise TrainingError("epochs must be between 1 and 500")
    if "val" not in ds.counts or "train" not in ds.counts:
        raise TrainingError(f"dataset {ds.name!r} has no train and val splits")
    if req.model_name is not None and not valid_name(req.model_name):
        raise TrainingError("model_name: lower-case letters, digits, '.', '_' and '-'")
    return ds


def next_version(store: ModelStore, name: str) -> str:
    """After every version of `name` in the store and among the bundled models."""
    return registry_service.next_ref(store=store, name=name).version


def run_training(
    ctx: JobContext,
    *,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    store: ModelStore,
    on_registered: Any = None,
) -> dict[str, Any]:
    """The `train` job handler: the dataset kind's trainer fits a model, which is packaged
    and published as the next version of its name."""
    ctx.stop_note = "nothing was registered"
    req = TrainRequest.of_params(ctx.params)
    earlier = published_earlier(ctx, store)
    if earlier is not None:  # an attempt killed after its publish: the version is there
        return earlier
    with sessions() as db:
        ds = check_request(db, req)
        trainer = trainer_for(ds.kind)
        with tempfile.TemporaryDirectory(prefix="clearscan-train-") as tmp:
            work = Path(tmp)
            fitted = trainer.train(TrainJob(ctx, db, blobs, ds, req, work))
            name = req.model_name or re.sub(r"[^a-z0-9._-]", "-", ds.name)[:64]
            version = next_version(store, name)
            pkg = work / "package"
            fitted.write_package(pkg, name=name, version=version)
            stamp(pkg, ctx.job_id)
            result = fitted.result.published(name, version).to_json()
            ctx.stage_result(result)
            publish(ctx, sessions, store, pkg, ModelRef(name, version), on_registered)
    return result


def stamp(pkg: Path, job_id: str) -> None:
    """Name the job in the package's manifest (`training.job`): the version says which run
    made it, and a later attempt of the run recognises it."""
    path = pkg / MANIFEST_FILE
    raw = json.loads(path.read_text())
    raw.setdefault("training", {})["job"] = job_id
    path.write_text(json.dumps(raw, indent=2))


def published_earlier(ctx: JobContext, store: ModelStore) -> dict[str, Any] | None:
    """The result of an earlier attempt of this run that published its version and was then
    killed before the run's end was recorded; None when no attempt got that far."""
    staged = ctx.staged_result()
    if not staged or not staged.get("name") or not staged.get("version"):
        return None
    folder = store.version_dir(str(staged["name"]), str(staged["version"]))
    try:
        made_by = load_manifest(folder).training.get("job")
    except (ManifestError, OSError):
        return None
    return staged if made_by == ctx.job_id else None


def publish(
    ctx: JobContext,
    sessions: sessionmaker[Session],
    store: ModelStore,
    pkg: Path,
    ref: ModelRef,
    on_registered: Any,
) -> ModelManifest:
    """The run's last step: unless cancelled, publish the package through the registry as the
    new version `ref`, in one atomic step (all or nothing), audited; a new name gets no active
    version (an admin activates one)."""
    if ctx.cancelled():
        raise JobCancelled()
    with sessions() as db:
        manifest = registry_service.publish(
            db=db,
            ctx=RequestContext(actor="training"),
            store=store,
            ref=ref,
            package=pkg,
            details={"job": ctx.job_id},
        )
    if on_registered is not None:
        on_registered(manifest.name, manifest.version)
    return manifest
