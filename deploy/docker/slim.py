"""Slim an installed virtual environment's site-packages for the image (run at build time).

- removes the test suites that numpy, scipy, scikit-learn, nibabel, joblib, skops,
  scikit-image, networkx, imageio and tifffile ship, the
  ONNX backend's test data, and files only a compiler or a debugger reads (C/Cython sources and
  headers, source maps);
- hard-links files with identical content and mode (wheels cannot hold symlinks, so shared
  libraries come as several copies: libfoo.so, libfoo.so.3, libfoo.so.3.2).

    python slim.py /opt/clearscan/lib/python3.11/site-packages
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

TEST_SUITES = (
    "numpy",
    "scipy",
    "sklearn",
    "nibabel",
    "joblib",
    "skops",
    "skimage",
    "networkx",
    "imageio",
    "tifffile",
)
TREES = ("onnx/backend/test/data",)
SUFFIXES = (".c", ".cpp", ".h", ".hpp", ".pyx", ".pxd", ".pxi", ".js.map", ".css.map")
MIN_DEDUP = 64 * 1024


def prune(site: Path) -> int:
    freed = 0
    doomed = [site / t for t in TREES]
    for pkg in TEST_SUITES:
        if (site / pkg).is_dir():
            doomed += [p for p in (site / pkg).rglob("tests") if p.is_dir()]
    for tree in doomed:
        if tree.is_dir():
            freed += sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())
            shutil.rmtree(tree)
    for f in site.rglob("*"):
        if f.is_file() and not f.is_symlink() and f.name.endswith(SUFFIXES):
            freed += f.stat().st_size
            f.unlink()
    return freed


def dedup(site: Path) -> int:
    by_size: dict[int, list[Path]] = {}
    for f in site.rglob("*"):
        if f.is_file() and not f.is_symlink() and f.stat().st_size >= MIN_DEDUP:
            by_size.setdefault(f.stat().st_size, []).append(f)
    freed = 0
    for size, files in by_size.items():
        if len(files) < 2:
            continue
        first: dict[tuple[str, int], Path] = {}
        for f in sorted(files):
            key = (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mode)
            keep = first.setdefault(key, f)
            if keep is not f and keep.stat().st_ino != f.stat().st_ino:
                tmp = f.with_name(f.name + ".slim-link")
                os.link(keep, tmp)
                os.replace(tmp, f)
                freed += size
    return freed


def main(argv: list[str]) -> None:
    if len(argv) != 2 or not Path(argv[1]).is_dir():
        raise SystemExit(f"usage: {argv[0]} SITE_PACKAGES_DIR")
    site = Path(argv[1])
    pruned, linked = prune(site), dedup(site)
    print(f"slim: removed {pruned >> 20} MiB, hard-linked {linked >> 20} MiB of duplicates")


if __name__ == "__main__":
    main(sys.argv)
