"""Time pytorch-grad-cam's `GradCAM` on the benchmark's ResNet-50 (part of bench_serving.py).

pytorch-grad-cam needs torchvision, which does not import beside the project's CPU torch, so this
runs under another interpreter: a scratch virtual environment with
`pip install torch==2.14.1 torchvision==0.29.1 grad-cam` (the torch/torchvision pair on this
machine's disk). It is never imported by the project or its tests.

    PYTHON benchmarks/gradcam_oracle.py WEIGHTS.npz INPUT.npy --target K [--runs 40]

WEIGHTS.npz holds the state_dict of `clearscan.training.resnet.resnet50(num_classes=2)`, whose
keys match torchvision's resnet50; they are loaded into `torchvision.models.resnet50`, so both
sides run the same network on the same input. Prints one JSON object: median ms of
`GradCAM(model, [model.layer4[-1]])` for the target class (batch 1, the library's default:
gradients through the whole network, map resized to the input and normalised), of an eager
forward, and the largest logit difference from the logits in WEIGHTS.npz (`__logits__`)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("input")
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    stored = np.load(args.weights)
    want_logits = stored["__logits__"]
    state = {k: torch.from_numpy(stored[k]) for k in stored.files if k != "__logits__"}
    model = torchvision.models.resnet50(weights=None, num_classes=want_logits.shape[1])
    model.load_state_dict(state)
    model.eval()
    x = torch.from_numpy(np.load(args.input))
    with torch.no_grad():
        logits = model(x).numpy()

    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
    targets = [ClassifierOutputTarget(args.target)]

    def gradcam() -> np.ndarray:
        return cam(input_tensor=x, targets=targets)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    times: dict[str, list[float]] = {"pytorch_grad_cam": [], "torch_eager_forward": []}
    fns = {"pytorch_grad_cam": gradcam, "torch_eager_forward": forward}
    for fn in fns.values():
        for _ in range(3):
            fn()
    for _ in range(args.runs):
        for key, fn in fns.items():
            fn()  # untimed: the same variant warms up first, as bench_in_process does
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1000)
    out = {
        "median_ms": {k: round(statistics.median(v), 2) for k, v in times.items()},
        "runs_each": args.runs,
        "logits_max_abs_diff": float(np.abs(logits - want_logits).max()),
        "map_shape": list(gradcam().shape),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
