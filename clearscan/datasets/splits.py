"""How an import chooses each item's split when the source gives none, shared by every dataset
kind: a stratified validation split carved out of train with a fixed seed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

VAL_FRACTION = 0.15
SPLIT_SEED = 0
BLOB_BATCH = 256  # blobs stored per file-system sync during an import


def _assign_splits(
    given: Sequence[str | None],
    labels: np.ndarray,
    *,
    groups: Sequence[str] | None,
    keys: Sequence[str] | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """The source's splits; when it has no validation split, a stratified one (by class; by
    whole groups when there are groups) is carved out of train with a fixed seed. With `keys`
    (content digests) the choice does not depend on the order the source lists its files."""
    splits = [s or "train" for s in given]
    if "val" in splits:
        return splits, {"validation": "from the source"}
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx = [i for i, s in enumerate(splits) if s == "train"]
    if keys is not None:
        train_idx.sort(key=lambda i: (keys[i], i))
    train = np.array(train_idx, dtype=np.int64)
    chosen: list[int] = []
    if groups is not None:
        group_rows: dict[str, list[int]] = defaultdict(list)
        for i in train:
            group_rows[groups[i]].append(int(i))
        by_class: dict[int, list[str]] = defaultdict(list)
        for g, rows in group_rows.items():  # a group's class: its most frequent label
            by_class[int(np.bincount(labels[rows]).argmax())].append(g)
        for _, gs in sorted(by_class.items()):
            gs = sorted(gs)
            rng.shuffle(gs)
            take = round(len(gs) * VAL_FRACTION) if len(gs) > 1 else 0
            for g in gs[:take]:
                chosen += group_rows[g]
        unit = "groups"
    else:
        for c in np.unique(labels[train]) if train.size else []:
            idx = train[labels[train] == c]
            idx = idx[rng.permutation(idx.size)]
            take = round(idx.size * VAL_FRACTION) if idx.size > 1 else 0
            chosen += idx[: max(take, 1 if idx.size > 1 else 0)].tolist()
        unit = "rows"
    for i in chosen:
        splits[i] = "val"
    info = {
        "validation": "made: stratified by class" + (", whole groups" if unit == "groups" else ""),
        "fraction": VAL_FRACTION,
        "seed": SPLIT_SEED,
    }
    return splits, info
