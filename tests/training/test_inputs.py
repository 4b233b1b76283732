"""A split too large for memory is written to a memory-mapped file while loading, with the same
values as the in-memory path."""

from __future__ import annotations

import numpy as np

from clearscan.datasets import service as datasets
from clearscan.inference.manifest import InputSpec
from clearscan.training import inputs
from tests.training.test_training_runs import blob_zip, upload


def test_large_split_is_memory_mapped_with_identical_values(
    client, admin_headers, app, tmp_path, monkeypatch
):
    upload(client, admin_headers, "blobs-mm", blob_zip(per_class=12))
    state = app.state.clearscan
    spec = InputSpec(channels=1, height=28, width=28)
    with state.sessions() as db:
        ds = datasets.get(db=db, ref="blobs-mm")
        x_mem, y_mem = inputs.load_split(db, state.blobs, ds, "train", spec, tmp_path)
        monkeypatch.setattr(inputs, "MAX_MEMORY_BYTES", 0)
        x_map, y_map = inputs.load_split(db, state.blobs, ds, "train", spec, tmp_path)
    assert not isinstance(x_mem, np.memmap)
    assert isinstance(x_map, np.memmap) and (tmp_path / "train.npy").exists()
    assert np.array_equal(np.asarray(x_map), x_mem) and np.array_equal(y_map, y_mem)
    assert x_mem.shape[1:] == (28, 28, 1) and x_mem.dtype == np.uint8
