"""Writing time of the DICOM Segmentation, LABELMAP and BINARY
(`python benchmarks/bench_dicom_outputs.py`).

Sources: a 512x512 single-frame DX image and a 512x512x30 multi-frame XA cine (no frame of
reference, so the frame-by-frame path of clearscan/dicom/seg.py). Label map: 3 classes
(background, vessel, catheter) in 16x16-pixel blocks. For each (source, kind) the median over
``--runs`` runs (after one warm-up run) of

* ``write``: ``segmentation(...)``, the object in memory;
* ``write+bytes``: that plus ``to_bytes`` (the Part 10 file).

and the file size; then the median time of ``measurement_report`` (3 stenoses) for the
multi-frame LABELMAP segmentation. Prints a table and writes bench-results/dicom_outputs.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clearscan.dicom import measurement_report, segmentation, to_bytes  # noqa: E402

LABELS = ["background", "vessel", "catheter"]
Kind = Literal["LABELMAP", "BINARY"]


def _source(sop_class: str, modality: str, frames: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.Rows = ds.Columns = 512
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def _label_map(frames: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, len(LABELS), (frames, 32, 32))
    return np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2).astype(np.uint8)


def _median_ms(fn: Any, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    cases = {
        "512x512 single-frame (DX)": (_source("1.2.840.10008.5.1.4.1.1.1", "DX", 1), 1),
        "512x512x30 multi-frame (XA)": (_source("1.2.840.10008.5.1.4.1.1.12.1", "XA", 30), 30),
    }
    rows = []
    for name, (src, frames) in cases.items():
        lm = _label_map(frames)
        lm2 = lm[0] if frames == 1 else lm
        kinds: tuple[Kind, ...] = ("LABELMAP", "BINARY")
        for kind in kinds:

            def write(src: Dataset = src, lm2: np.ndarray = lm2, kind: Kind = kind) -> Any:
                return segmentation([src], lm2, LABELS, kind=kind)

            write_ms = _median_ms(write, args.runs)
            bytes_ms = _median_ms(lambda write=write: to_bytes(write()), args.runs)
            size = len(to_bytes(write()))
            rows.append(
                {
                    "source": name,
                    "kind": kind,
                    "write_ms": round(write_ms, 1),
                    "write_bytes_ms": round(bytes_ms, 1),
                    "file_bytes": size,
                }
            )
    print(f"{'source':30} {'kind':9} {'write ms':>9} {'+bytes ms':>10} {'file bytes':>11}")
    for r in rows:
        print(
            f"{r['source']:30} {r['kind']:9} {r['write_ms']:9.1f} {r['write_bytes_ms']:10.1f} "
            f"{r['file_bytes']:11,}"
        )
    src, _frames = cases["512x512x30 multi-frame (XA)"]
    seg = segmentation([src], _label_map(30), LABELS, kind="LABELMAP")
    stenosis = {
        "percent_stenosis": 48.0,
        "mld": 1.4,
        "rvd": 2.7,
        "rvd_method": "interpolated",
        "rvd_proximal_distal_mean": 2.75,
        "lesion_length": 6.5,
        "position": {"x": 200.0, "y": 180.0, "segment": 1, "distance": 10.0},
    }
    measurements = {"unit": "mm", "stenoses": [stenosis] * 3, "segments": []}
    sr_ms = _median_ms(
        lambda: to_bytes(measurement_report([src], seg, measurements, frame=15)), args.runs
    )
    print(f"measurement_report + to_bytes (3 stenoses): {sr_ms:.1f} ms")
    out = ROOT / "bench-results" / "dicom_outputs.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"runs": args.runs, "results": rows, "report_ms": round(sr_ms, 1)}, indent=2)
    )


if __name__ == "__main__":
    main()
