"""Dynamic micro-batching on vs off, in process, many concurrent requests (the GPU figure).

Builds the random-weight ResNet-50 package (benchmarks/make_resnet_package.py), loads it with the
server's runtime on `--device` (cpu, or cuda: ONNX Runtime's CUDA execution provider), and runs
`--clients` threads that each submit one 224 x 224 image at a time through the version's
MicroBatcher for `--seconds`, once with `max_batch_size=--max-batch` and once with batching off
(`max_batch_size=1`), explained (Grad-CAM in the same run) and not. `--fp16` adds a half-precision
copy of the graph (float32 in and out, float16 inside), for the CUDA provider.

    .venv/bin/python benchmarks/bench_batching.py --device cuda --clients 64   # on a GPU
    .venv/bin/python benchmarks/bench_batching.py --clients 8 --seconds 5      # CPU smoke run

`--runtime torchscript` serves the same network as a TorchScript package through the server's
TorchScript runtime instead (PyTorch; on `--device cuda` the model and the Grad-CAM gradients run
on the GPU). That is the GPU path available where `onnxruntime-gpu` is not installed (the lent
device image has PyTorch with CUDA but only the CPU build of ONNX Runtime, and the 244 MiB
onnxruntime-gpu wheel exceeds what can be carried there). `--fp16` applies to ONNX only.

Results: bench-results/batching.json. Not part of `make bench`'s defaults on CPU-only machines
(on 2 CPU cores batching cannot add throughput: one image already uses both cores)."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.make_resnet_package import build_package  # noqa: E402
from clearscan.inference.base import Model  # noqa: E402
from clearscan.inference.batching import MicroBatcher  # noqa: E402
from clearscan.inference.manifest import load_manifest  # noqa: E402
from clearscan.inference.runtimes import create_model  # noqa: E402


def to_fp16(pkg: Path) -> Path:
    """A copy of the package whose graph computes in float16 (input and output stay float32)."""
    import onnx

    src = onnx.load_model(str(pkg / "model.onnx"))
    try:
        from onnxconverter_common import float16  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit(
            "--fp16 needs onnxconverter-common (pip install onnxconverter-common)"
        ) from None
    half = float16.convert_float_to_float16(src, keep_io_types=True)
    out = pkg.parent / (pkg.name + "-fp16")
    out.mkdir()
    onnx.save_model(half, str(out / "model.onnx"))
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["version"] = manifest["version"] + "-fp16"
    manifest["files"] = {
        "model.onnx": hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def to_torchscript(pkg: Path, seed: int = 0) -> Path:
    """The package's network (same seed, same weights) as a TorchScript package: torch.jit.trace
    of `build_model`, Grad-CAM target `layer4`."""
    import torch

    from benchmarks.make_resnet_package import build_model

    out = pkg.parent / (pkg.name + "-torchscript")
    out.mkdir()
    model = build_model(seed)
    example = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(out / "model.pt"))
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest.update(
        runtime="torchscript",
        weights="model.pt",
        version=manifest["version"] + "-torchscript",
        explain={"method": "gradcam", "target": "layer4"},
        files={"model.pt": hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()},
    )
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def run_phase(
    model: Model, *, clients: int, seconds: float, max_batch: int, explain: bool
) -> dict[str, Any]:
    spec = model.manifest.input
    rng = np.random.default_rng(0)
    x = rng.random((spec.channels, spec.height, spec.width), dtype=np.float32)
    batcher = MicroBatcher(
        lambda b, *, explain: model.run(b, explain=explain),
        max_batch_size=max_batch,
        max_delay_ms=model.manifest.batching.max_delay_ms,
        name=f"bench-{max_batch}",
    )
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds
    start_gate = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        start_gate.wait()
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            batcher.submit(x, explain=explain).result()
            latencies[i].append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    batcher.close()
    flat = sorted(v for per in latencies for v in per)
    st = batcher.stats
    return {
        "max_batch": max_batch,
        "explain": explain,
        "requests": len(flat),
        "throughput_img_s": round(len(flat) / elapsed, 2),
        "p50_ms": round(statistics.median(flat), 2),
        "p95_ms": round(flat[int(0.95 * (len(flat) - 1))], 2),
        "mean_batch": round(st.mean_batch, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--fp16", action="store_true", help="also run a float16 copy of the graph")
    ap.add_argument("--runtime", choices=["onnx", "torchscript"], default="onnx")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "batching.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pkg = build_package(Path(tmp) / "resnet50")
        if args.runtime == "torchscript":
            packages = [("fp32", to_torchscript(pkg))]
        else:
            packages = [("fp32", pkg)] + ([("fp16", to_fp16(pkg))] if args.fp16 else [])
        results: dict[str, Any] = {
            "device": args.device,
            "runtime": args.runtime,
            "clients": args.clients,
            "runs": [],
        }
        for precision, path in packages:
            model = create_model(path, load_manifest(path), device=args.device)
            model.load()
            if not model.explainable:
                raise SystemExit(f"{path.name} is not explainable: {model.cam_error}")
            for explain in (False, True):
                on = run_phase(
                    model,
                    clients=args.clients,
                    seconds=args.seconds,
                    max_batch=args.max_batch,
                    explain=explain,
                )
                off = run_phase(
                    model, clients=args.clients, seconds=args.seconds, max_batch=1, explain=explain
                )
                row = {
                    "precision": precision,
                    "explain": explain,
                    "batching_on": on,
                    "batching_off": off,
                    "speedup": round(on["throughput_img_s"] / off["throughput_img_s"], 2),
                }
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
            model.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
