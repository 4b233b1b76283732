"""Training recipes: plain data, importable without PyTorch or scikit-learn (the server lists
and checks recipe names; only the trainers in clearscan.training.trainers need those)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ImageRecipe:
    name: str = "cnn-small"
    size: int = 28  # input side (28-64 px for this architecture)
    widths: tuple[int, int, int] = (24, 48, 96)
    epochs: int = 24
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    class_weights: bool = True
    patience: int = 12
    rotate: float = 10.0
    scale: float = 0.1
    shift: float = 2.0
    brightness: float = 0.1
    contrast: float = 0.2
    hflip: bool = False
    seed: int = 0
    threads: int = 2
    arch: str = "cnn"  # cnn (PneumoniaNet, 28-64 px) or resnet18 (224 px)
    eval_batch: int = 512  # batch of the BatchNorm re-estimation and validation passes

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


RECIPES: dict[str, ImageRecipe] = {
    "cnn-small": ImageRecipe(),
    "cnn-small-64": ImageRecipe(name="cnn-small-64", size=64, widths=(32, 64, 128), epochs=20),
    # the larger one, for 224 px inputs: ResNet-18 (11 M parameters). Training runs on the CPU
    # (CUDA training is not wired yet): on 2 cores an epoch of 5,000 images takes tens of minutes
    "resnet18-224": ImageRecipe(
        name="resnet18-224",
        size=224,
        arch="resnet18",
        epochs=30,
        batch_size=32,
        lr=1e-3,
        weight_decay=1e-4,
        shift=8.0,
        patience=8,
        eval_batch=64,
    ),
}


# table datasets: "auto" cross-validates the three and keeps the best (see trainers.tabular)
TABULAR_RECIPES = ("auto", "logistic-regression", "random-forest", "gradient-boosting")
