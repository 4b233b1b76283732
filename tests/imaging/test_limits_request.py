"""The files of one analysis request: decoded one at a time (at most one full-resolution image in
memory, never all 32) and within one decoded-bytes budget across the files."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clearscan.imaging import ImageTooLarge, Limits, decode
from clearscan.inference.base import Model
from clearscan.inference.manifest import load_manifest
from clearscan.inference.runtimes import create_model
from clearscan.inference.tasks import ImageClassificationTask, ImageRequest

BUNDLED = Path(__file__).resolve().parents[2] / "clearscan" / "bundled_models" / "pneumonia-cxr"


@pytest.fixture(scope="module")
def model() -> Iterator[Model]:
    m = create_model(BUNDLED, load_manifest(BUNDLED))
    m.load()
    yield m
    m.close()


def _png(side: int, seed: int, rgb: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (side, side, 3) if rgb else (side, side)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_files_are_decoded_one_at_a_time(model):
    """Preprocessing 12 images peaks at about one decoded image, not twelve."""
    uploads = [_png(1000, seed, rgb=True) for seed in range(12)]
    one = decode(uploads[0], limits=Limits()).decoded_bytes  # ~31 MB counted per image
    task = ImageClassificationTask(model)
    tracemalloc.start()
    try:
        prepared = task.preprocess(ImageRequest(uploads=uploads, limits=Limits(), explain=False))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(prepared.tensors) == 12
    assert peak < one  # all twelve at once would be 12x one image's float32 arrays alone
    for img in prepared.images:  # metadata kept, pixel arrays dropped
        assert (img.width, img.height, img.channels) == (1000, 1000, 3)
        assert img.pixels.size == 0 and img.values is None


def test_request_budget_spans_the_files(model):
    uploads = [_png(256, seed) for seed in range(3)]
    each = decode(uploads[0], limits=Limits()).decoded_bytes
    task = ImageClassificationTask(model)
    fits = Limits(max_request_decoded_bytes=2 * each)
    assert len(task.preprocess(ImageRequest(uploads=uploads[:2], limits=fits)).tensors) == 2
    with pytest.raises(ImageTooLarge) as info:
        task.preprocess(ImageRequest(uploads=uploads, limits=fits))
    assert info.value.status_code == 413
    detail = info.value.detail
    assert detail.startswith("file 3: ") and "CLEARSCAN_MAX_REQUEST_DECODED_MB" in detail
    assert detail.endswith("and 0 MB is left")


def test_a_file_over_the_per_image_cap_names_the_file(model):
    uploads = [_png(64, 0), _png(600, 1, rgb=True)]
    small = decode(uploads[0], limits=Limits()).decoded_bytes
    with pytest.raises(ImageTooLarge, match=r"^file 2: .*CLEARSCAN_MAX_DECODED_MB"):
        ImageClassificationTask(model).preprocess(
            ImageRequest(uploads=uploads, limits=Limits(max_decoded_bytes=small * 2))
        )
