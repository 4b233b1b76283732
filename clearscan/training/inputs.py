"""Image datasets as model inputs: each item decoded and put through the serving preprocessing,
so a model sees at training what it will see in production. Needs no PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.imaging import Limits, decode
from clearscan.inference.manifest import InputSpec
from clearscan.inference.preprocess import preprocess
from clearscan.jobs.service import JobContext
from clearscan.storage.base import BlobStore

__all__ = ["MAX_MEMORY_BYTES", "load_split"]

MAX_MEMORY_BYTES = 512 * 2**20  # larger input arrays live in a memory-mapped file


def load_split(
    db: Session,
    blobs: BlobStore,
    ds: Dataset,
    split: str,
    spec: InputSpec,
    workdir: Path,
    ctx: JobContext | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x H x W x C model inputs (through the serving preprocessing) and labels. Large
    splits go to a memory-mapped file in `workdir`: memory stays flat whatever the size."""
    rows = db.execute(
        select(DatasetItem.blob, DatasetItem.label)
        .where(DatasetItem.dataset_id == ds.id, DatasetItem.split == split)
        .order_by(DatasetItem.idx)
    ).all()
    n = len(rows)
    shape = (n, spec.height, spec.width, spec.channels)
    if n * spec.height * spec.width * spec.channels > MAX_MEMORY_BYTES:
        x: np.ndarray = np.lib.format.open_memmap(
            workdir / f"{split}.npy", mode="w+", dtype=np.uint8, shape=shape
        )
    else:
        x = np.empty(shape, dtype=np.uint8)
    y = np.fromiter((r.label for r in rows), dtype=np.int64, count=n)
    limits = Limits()
    for i, r in enumerate(rows):
        img = decode(blobs.get(r.blob), limits=limits)
        t = preprocess(img.pixels, spec).tensor  # C x H x W in [0, 1] (mean 0, std 1)
        x[i] = np.clip(np.rint(t.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
        if ctx is not None and i % 500 == 0:
            ctx.report(stage=f"loading {split} images", loaded=i, total=n)
    return x, y
