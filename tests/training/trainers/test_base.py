"""The trainer contract: the table of trainers by dataset kind (recipes listed and PyTorch's
absence detected without importing anything heavy), and TrainResult as the job's stored result
(the keys the API has always returned for image and table runs) read back typed."""

from __future__ import annotations

import pytest

from clearscan.training.recipes import RECIPES, TABULAR_RECIPES
from clearscan.training.trainers import TRAINERS, TrainerEntry, recipe_choices, trainer_for
from clearscan.training.trainers.base import Trainer, TrainRequest, TrainResult

IMAGE_KEYS = {"model", "name", "version", "recipe", "dataset", "val_metrics", "threshold"}
IMAGE_KEYS |= {"epochs_run", "best_epoch", "wall_s"}
TABLE_KEYS = {"model", "name", "version", "recipe", "cross_validation", "dataset"}
TABLE_KEYS |= {"val_metrics", "threshold", "feature_importance"}
METRICS = {"n": 10, "accuracy": 0.9, "auc": 0.95, "balanced_accuracy": 0.9}


def test_trainers_by_dataset_kind() -> None:
    assert recipe_choices() == {"images": list(RECIPES), "table": list(TABULAR_RECIPES)}
    assert TRAINERS["images"].requires == "torch" and TRAINERS["table"].available()
    assert not TrainerEntry("x", (), requires="no_such_package_for_clearscan").available()
    table = trainer_for("table")
    assert isinstance(table, Trainer) and table.dataset_kind == "table"
    pytest.importorskip("torch")
    assert trainer_for("images").dataset_kind == "images"


def test_image_result_keeps_its_keys_and_reads_back() -> None:
    recipe = RECIPES["cnn-small"].describe()
    r = TrainResult(
        kind="image",
        recipe="cnn-small",
        recipe_params=recipe,
        val_metrics=METRICS,
        threshold=0.42,
        dataset={"name": "blobs", "hash": "abc"},
        history=[{"epoch": 1, "loss": 0.5}],
        epochs_run=3,
        best_epoch=2,
        wall_s=1.5,
    ).published("blobs", "1.0.0")
    stored = r.to_json()
    assert set(stored) == IMAGE_KEYS
    assert stored["model"] == "blobs:1.0.0" and stored["recipe"] == recipe
    back = TrainResult.from_json(stored, history=r.history)
    assert back == r


def test_table_result_keeps_its_keys_and_reads_back() -> None:
    importance = [{"feature": f"f{i}", "importance": 1.0 / (i + 1)} for i in range(30)]
    r = TrainResult(
        kind="table",
        recipe="random-forest",
        val_metrics=METRICS,
        threshold=None,
        dataset={"name": "bc", "hash": "h", "license": None},
        cross_validation={"random-forest": {"auc_mean": 0.99, "auc_std": 0.01}},
        feature_importance=importance,
    ).published("bc", "1.1.0")
    stored = r.to_json()
    assert set(stored) == TABLE_KEYS
    assert stored["recipe"] == "random-forest" and len(stored["feature_importance"]) == 20
    back = TrainResult.from_json(stored)
    assert back.kind == "table" and back.recipe == "random-forest" and back.model == "bc:1.1.0"
    assert back.feature_importance == importance[:20] and back.threshold is None


def test_from_json_tolerates_malformed_results() -> None:
    r = TrainResult.from_json({"threshold": "x", "val_metrics": [], "epochs_run": True})
    assert (r.kind, r.recipe, r.model, r.threshold, r.epochs_run) == ("image", "", "", None, None)
    assert r.val_metrics == {} and r.dataset == {}


def test_request_round_trips_through_job_params() -> None:
    req = TrainRequest(dataset="d", recipe="auto", seed=3, window=64)
    assert req.to_params() == {"dataset": "d", "recipe": "auto", "seed": 3, "window": 64}
    assert TrainRequest.of_params(req.to_params()) == req
