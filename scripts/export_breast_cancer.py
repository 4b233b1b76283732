"""Write scikit-learn's Wisconsin breast cancer table (569 rows, 30 features) as a CSV with a
`diagnosis` column (malignant / benign): the tabular example dataset.

    .venv/bin/python scripts/export_breast_cancer.py breast_cancer.csv
    .venv/bin/clearscan datasets import breast_cancer.csv --name breast-cancer --target diagnosis

Data: Wolberg, Street and Mangasarian, UCI Machine Learning Repository (CC BY 4.0), bundled
with scikit-learn (no download)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from sklearn.datasets import load_breast_cancer


def export(dest: Path) -> Path:
    data = load_breast_cancer()
    with dest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*data.feature_names, "diagnosis"])
        for row, target in zip(data.data, data.target, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), data.target_names[target]])
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dest", type=Path, help="CSV file to write")
    print(export(ap.parse_args().dest))


if __name__ == "__main__":
    main()
