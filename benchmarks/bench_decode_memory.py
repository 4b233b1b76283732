"""Peak memory of preparing one analysis request of 32 images, before and after decoding one file
at a time (`python benchmarks/bench_decode_memory.py`).

Each measurement runs in a fresh child process: load the bundled model, build the request's
files, note the resident memory, prepare the request, and report the peak resident memory
(``ru_maxrss``) above that baseline.

* ``all-at-once``: what the image task did before: decode every upload, keep every decoded image
  (float32 pixels, and modality values for DICOM), then preprocess them;
* ``one-at-a-time``: ``ImageClassificationTask.preprocess`` now: decode one upload, reduce it to
  the model's input tensor, drop its full-resolution arrays, then the next.

Prints a table and writes bench-results/decode_memory.json."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import io, json, resource, sys
import numpy as np
from PIL import Image
sys.path.insert(0, sys.argv[1])
from clearscan.imaging import Limits, decode
from clearscan.inference.manifest import load_manifest
from clearscan.inference.preprocess import preprocess
from clearscan.inference.runtimes import create_model
from clearscan.inference.tasks import ImageClassificationTask, ImageRequest

mode, files, side = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pkg = __import__("pathlib").Path(sys.argv[1]) / "clearscan" / "bundled_models" / "pneumonia-cxr"
model = create_model(pkg, load_manifest(pkg))
model.load()
yy, xx = np.mgrid[0:side, 0:side]
uploads = []
for i in range(files):
    rgb = np.stack([(xx + i) % 256, (yy + 2 * i) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    uploads.append(out.getvalue())
limits = Limits()
task = ImageClassificationTask(model)

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

base = rss_kb()
if mode == "all-at-once":
    images = [decode(d, limits=limits) for d in uploads]
    tensors = [preprocess(img.pixels, model.manifest.image).tensor for img in images]
else:
    tensors = task.preprocess(ImageRequest(uploads=uploads, limits=limits, explain=False)).tensors
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
upload_mb = sum(map(len, uploads)) / 2**20
print(json.dumps({"mode": mode, "files": files, "side": side, "upload_mb": upload_mb,
                  "baseline_mb": base / 1024, "peak_above_baseline_mb": (peak - base) / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=32)
    ap.add_argument("--side", type=int, default=1024, help="each image is side x side RGB")
    args = ap.parse_args()
    results = []
    for mode in ("all-at-once", "one-at-a-time"):
        cmd = [sys.executable, "-c", CHILD, str(ROOT), mode, str(args.files), str(args.side)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.files} files of {args.side} x {args.side} RGB PNG")
    print(f"{'mode':<16}{'uploads MB':>12}{'peak above baseline MB':>26}")
    for r in results:
        print(f"{r['mode']:<16}{r['upload_mb']:>12.1f}{r['peak_above_baseline_mb']:>26.1f}")
    dest = ROOT / "bench-results"
    dest.mkdir(exist_ok=True)
    (dest / "decode_memory.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
