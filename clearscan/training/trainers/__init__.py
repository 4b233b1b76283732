"""Trainers, one per dataset kind, chosen through :data:`TRAINERS` and imported only when a run
needs one: the image trainer imports PyTorch, which the serving install lacks, so nothing else
imports it (`trainer_for` refuses the kind with a clear message instead)."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from clearscan.training.recipes import RECIPES, TABULAR_RECIPES
from clearscan.training.trainers.base import Fitted, Trainer, TrainJob, TrainRequest, TrainResult

__all__ = [
    "TRAINERS",
    "Fitted",
    "TrainJob",
    "TrainRequest",
    "TrainResult",
    "Trainer",
    "TrainerEntry",
    "recipe_choices",
    "trainer_for",
]


@dataclass(frozen=True)
class TrainerEntry:
    module: str  # holds TRAINER, an instance of Trainer
    recipes: tuple[str, ...]
    requires: str | None = None  # an optional package the trainer needs
    missing: str = ""  # why training is refused without it

    def available(self) -> bool:
        """Whether `requires` can be imported, found without importing it."""
        if self.requires is None:
            return True
        try:
            return importlib.util.find_spec(self.requires) is not None
        except (ImportError, ValueError):  # a blocked or half-removed install
            return False


TRAINERS: dict[str, TrainerEntry] = {
    "images": TrainerEntry(
        "clearscan.training.trainers.image",
        tuple(RECIPES),
        requires="torch",
        missing="training on image datasets needs PyTorch, which this installation lacks: "
        "install the train extra (pip install 'clearscan[train]'); table datasets train "
        "without it",
    ),
    "table": TrainerEntry("clearscan.training.trainers.tabular", TABULAR_RECIPES),
}


def recipe_choices() -> dict[str, list[str]]:
    """Recipe names by dataset kind."""
    return {kind: list(e.recipes) for kind, e in TRAINERS.items()}


def trainer_for(kind: str) -> Trainer:
    """The trainer of a dataset kind (imported now)."""
    trainer: Trainer = importlib.import_module(TRAINERS[kind].module).TRAINER
    return trainer
