"""Dataset pages: the list with its import form, and one dataset's facts, class-balance bars,
samples (image datasets) or column summaries and feature preview (tables)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clearscan.datasets.models import Dataset
from clearscan.datasets.schemas import DatasetDetail, SampleItem
from clearscan.web.forms import Pagination
from clearscan.web.present.numbers import number
from clearscan.web.present.page import Page

FIELDS = {  # import form field -> (title, longest accepted value)
    "name": ("Name", 64),
    "target": ("Target column", 200),
    "time_column": ("Time column", 200),
    "group_column": ("Group column", 200),
    "labels": ("Class names", 4000),
    "license": ("Licence and attribution", 2000),
    "team": ("Team", 64),
}
SPLIT_FACTS = {"validation": "Validation split", "fraction": "Share of train", "seed": "Seed"}
BAR_SLOTS = 8  # colours of the class-balance bars (.seg-c0 .. .seg-c7)


@dataclass(frozen=True, kw_only=True)
class DatasetsPage(Page):
    template = "datasets.html"
    items: list[Dataset]
    pages: Pagination
    error: str | None
    form: dict[str, str]
    max_upload_mb: float
    teams: tuple[str, ...] = ()  # the admin's teams: a picker when there are several


def empty_form() -> dict[str, str]:
    return dict.fromkeys(FIELDS, "")


# --- class balance ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BarSegment:
    """One class's part of a split's stacked bar; x and width in percent of the bar."""

    label: str
    n: int
    share: float
    slot: int
    x: str
    width: str


@dataclass(frozen=True)
class BalanceRow:
    split: str
    counts: list[int]  # per class, in the dataset's class order
    total: int
    segments: list[BarSegment]  # classes with items only


@dataclass(frozen=True)
class BalanceClass:
    label: str
    slot: int


@dataclass(frozen=True)
class ClassBalance:
    classes: list[BalanceClass]
    rows: list[BalanceRow]
    totals: list[int]  # per class, over all splits
    total: int


def class_balance(classes: Sequence[str], counts: Mapping[str, Mapping[str, int]]) -> ClassBalance:
    """Per split (`counts`: split -> class -> items): the count of each class, the total and the
    bar segments."""
    rows = []
    for split, per in counts.items():
        n_per_class = [int(per.get(c, 0)) for c in classes]
        total = sum(n_per_class)
        segments = []
        x = 0.0
        for i, (label, n) in enumerate(zip(classes, n_per_class, strict=True)):
            if n and total:
                width = 100 * n / total
                segments.append(
                    BarSegment(
                        label=label,
                        n=n,
                        share=n / total,
                        slot=i % BAR_SLOTS,
                        x=f"{x:.3f}",
                        width=f"{width:.3f}",
                    )
                )
                x += width
        rows.append(BalanceRow(split=split, counts=n_per_class, total=total, segments=segments))
    totals = [sum(r.counts[i] for r in rows) for i in range(len(classes))]
    return ClassBalance(
        classes=[BalanceClass(label=c, slot=i % BAR_SLOTS) for i, c in enumerate(classes)],
        rows=rows,
        totals=totals,
        total=sum(totals),
    )


# --- columns of a table -----------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnRow:
    name: str
    role: str | None  # target, time, group or split
    type: str
    missing: object
    distinct: object
    stats: list[str] | None  # min, max, mean, std of a numeric column
    values: str  # the first distinct values of a categorical one
    more_values: bool


def column_rows(info: Mapping[str, Any]) -> list[ColumnRow]:
    """The column summaries of a table dataset's `info`, with the role each column plays."""
    roles = {
        info.get("target"): "target",
        info.get("time_column"): "time",
        info.get("group_column"): "group",
        "split": "split",
    }
    out = []
    for col in info.get("columns") or []:
        values = col.get("values")
        out.append(
            ColumnRow(
                name=col.get("name", ""),
                role=roles.get(col.get("name")),
                type=col.get("type", ""),
                missing=col.get("missing", 0),
                distinct=col.get("distinct", ""),
                stats=[number(col.get(k)) for k in ("min", "max", "mean", "std")]
                if "mean" in col
                else None,
                values=", ".join(str(v) for v in values) if values else "",
                more_values=bool(values)
                and isinstance(col.get("distinct"), int)
                and col["distinct"] > len(values),
            )
        )
    return out


def split_facts(recipe: object) -> list[tuple[str, str]]:
    """The split recipe (validation share, seed, ...) as titled facts."""
    if not isinstance(recipe, dict):
        return []
    facts = []
    for key, value in recipe.items():
        text = f"{value:.0%}" if key == "fraction" and isinstance(value, float) else str(value)
        facts.append((SPLIT_FACTS.get(key, key.replace("_", " ").capitalize()), text))
    return facts


# --- one dataset ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleGroup:
    split: str
    label: str
    items: list[SampleItem]


@dataclass(frozen=True, kw_only=True)
class DatasetPage(Page):
    template = "dataset.html"
    ds: DatasetDetail
    info: dict[str, Any]
    balance: ClassBalance
    split_facts: list[tuple[str, str]]
    sample_groups: list[SampleGroup]
    columns: list[ColumnRow]
    features: dict[str, Any] | None  # the feature preview of a table, or {"error": ...}


def dataset_page(detail: DatasetDetail, features: dict[str, Any] | None) -> DatasetPage:
    groups: dict[tuple[str, str], list[SampleItem]] = {}
    for s in detail.samples:
        groups.setdefault((s.split, s.label), []).append(s)
    return DatasetPage(
        ds=detail,
        info=detail.info,
        balance=class_balance(detail.classes, detail.counts),
        split_facts=split_facts(detail.info.get("splits")),
        sample_groups=[SampleGroup(split=k[0], label=k[1], items=v) for k, v in groups.items()],
        columns=column_rows(detail.info) if detail.kind == "table" else [],
        features=features,
    )
