"""Pydantic in/out models for predictions, cases, images and reviews."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from clearscan.cases.models import Case, FindingReview, Image, Prediction, Review

API = "/api/v1"


class ModelRef(BaseModel):
    name: str
    version: str


class ReviewCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agree: StrictBool
    correct_label: str | None = Field(default=None, max_length=128)
    comment: str | None = Field(default=None, max_length=4000)


class ReviewPublic(BaseModel):
    id: str
    prediction_id: str
    user: str | None
    agree: bool
    correct_label: str | None
    comment: str | None
    created_at: datetime

    @classmethod
    def of(cls, r: Review, names: dict[int, str]) -> ReviewPublic:
        return cls(
            id=r.id,
            prediction_id=r.prediction_id,
            user=names.get(r.user_id),
            agree=r.agree,
            correct_label=r.correct_label,
            comment=r.comment,
            created_at=r.created_at,
        )


class PredictionPublic(BaseModel):
    id: str
    image_id: str
    model: ModelRef
    labels: list[str]
    probabilities: list[float]
    top_label: str
    heatmap_url: str | None
    heatmap_box: list[int] | None = Field(
        default=None,
        description="x0, y0, x1, y1: the image region the model saw and the heatmap covers",
    )
    explain_method: str | None = None
    out_of_domain: bool | None = Field(
        default=None,
        description="the input lies outside the model's training inputs (null: "
        "the model has no out-of-domain reference)",
    )
    ood_score: float | None = Field(default=None, description="> 1 means out of domain")
    contributions: list[dict[str, Any]] | None = Field(
        default=None,
        description="tabular models: per feature, how much the log-odds of the decided class "
        "drop when that feature alone is set to its training baseline",
    )
    task: Literal["classification", "segmentation"] = Field(
        default="classification",
        description="segmentation: `probabilities` are each class's share of the image's "
        "pixels and `top_label` the most present class other than the background",
    )
    mask_url: str | None = Field(
        default=None,
        description="segmentations: the label map, an 8-bit grayscale PNG at the image's "
        "resolution whose pixel values index `labels` (0: the background)",
    )
    area_px: dict[str, int] | None = Field(
        default=None, description="segmentations: pixels of each class but the background"
    )
    area_mm2: dict[str, float] | None = Field(
        default=None,
        description="segmentations: the same areas in mm2 (null: the image has no pixel "
        "spacing, so figures are in pixels only)",
    )
    pixel_spacing: dict[str, Any] | None = Field(
        default=None,
        description="segmentations: `row_mm`, `col_mm` and `source` (the DICOM attribute or "
        "NIfTI header field the spacing was read from, e.g. ImagerPixelSpacing corrected by "
        "the magnification)",
    )
    measurements: dict[str, Any] | None = Field(
        default=None,
        description="segmentations whose model names measurement recipes: by recipe. "
        "`vessel-qca`: `unit` (mm or px, with `unit_note` saying why px), `stenoses` (most "
        "severe first, at least the model's threshold: `percent_stenosis`, `mld`, `rvd` "
        "(interpolated reference), `rvd_proximal_distal_mean`, `lesion_length`, `position`), "
        "`segments`, `diameter_method`, `ms`",
    )
    inference_ms: float
    created_at: datetime

    @classmethod
    def of(cls, p: Prediction) -> PredictionPublic:
        ood = (p.details or {}).get("ood_score")
        return cls(
            id=p.id,
            image_id=p.image_id,
            model=ModelRef(name=p.model_name, version=p.model_version),
            labels=p.labels,
            probabilities=p.probabilities,
            top_label=p.top_label,
            heatmap_url=f"{API}/predictions/{p.id}/heatmap.png" if p.heatmap_sha256 else None,
            heatmap_box=p.heatmap_box,
            explain_method=(p.details or {}).get("explain_method") if p.heatmap_sha256 else None,
            out_of_domain=None if ood is None else ood > 1.0,
            ood_score=ood,
            contributions=(p.details or {}).get("contributions"),
            task="segmentation" if p.mask_sha256 else "classification",
            mask_url=f"{API}/predictions/{p.id}/mask.png" if p.mask_sha256 else None,
            area_px=(p.details or {}).get("area_px"),
            area_mm2=(p.details or {}).get("area_mm2"),
            pixel_spacing=(p.details or {}).get("pixel_spacing"),
            measurements=(p.details or {}).get("measurements"),
            inference_ms=p.inference_ms,
            created_at=p.created_at,
        )


class FindingReviewCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accept: StrictBool
    comment: str | None = Field(default=None, max_length=4000)


class FindingReviewPublic(BaseModel):
    id: str
    prediction_id: str
    finding: int = Field(description="0-based position in the prediction's stenoses")
    user: str | None
    accept: bool
    comment: str | None
    created_at: datetime

    @classmethod
    def of(cls, r: FindingReview, names: dict[int, str]) -> FindingReviewPublic:
        return cls(
            id=r.id,
            prediction_id=r.prediction_id,
            finding=r.finding,
            user=names.get(r.user_id),
            accept=r.accept,
            comment=r.comment,
            created_at=r.created_at,
        )


class PredictionWithReviews(PredictionPublic):
    reviews: list[ReviewPublic] = Field(default_factory=list)
    finding_reviews: list[FindingReviewPublic] = Field(default_factory=list)


class PredictResponse(BaseModel):
    case_id: str
    predictions: list[PredictionPublic]


class ImagePublic(BaseModel):
    id: str
    position: int
    sha256: str
    size_bytes: int
    format: str
    modality: str | None
    width: int
    height: int
    channels: int
    bit_depth: int
    frames: int
    frame_index: int
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    # DICOM BurnedInAnnotation=YES: text in the pixels may identify the patient
    burned_in_annotation: bool = False
    file_url: str
    preview_url: str
    predictions: list[PredictionWithReviews] = Field(default_factory=list)

    @classmethod
    def of(cls, im: Image, names: dict[int, str]) -> ImagePublic:
        preds = [
            PredictionWithReviews(
                **PredictionPublic.of(p).model_dump(),
                reviews=[ReviewPublic.of(r, names) for r in p.reviews],
                finding_reviews=[FindingReviewPublic.of(r, names) for r in p.finding_reviews],
            )
            for p in im.predictions
        ]
        return cls(
            id=im.id,
            position=im.position,
            sha256=im.sha256,
            size_bytes=im.size_bytes,
            format=im.format,
            modality=im.modality,
            width=im.width,
            height=im.height,
            channels=im.channels,
            bit_depth=im.bit_depth,
            frames=im.frames,
            frame_index=im.frame_index,
            study_uid=im.study_uid,
            series_uid=im.series_uid,
            sop_uid=im.sop_uid,
            burned_in_annotation=bool(im.burned_in_annotation),
            file_url=f"{API}/images/{im.id}/file",
            preview_url=f"{API}/images/{im.id}/preview.png",
            predictions=preds,
        )


class CaseSummary(BaseModel):
    id: str
    created_at: datetime
    created_by: str | None
    patient_ref: str | None
    # keyed HMAC of the DICOM Patient ID: the same patient, the same key (no ID stored)
    patient_key: str | None = None
    note: str | None
    image_count: int
    top_labels: list[str]
    models: list[ModelRef]

    @classmethod
    def of(cls, c: Case, names: dict[int, str]) -> CaseSummary:
        preds = [p for im in c.images for p in im.predictions]
        models = {(p.model_name, p.model_version) for p in preds}
        return cls(
            id=c.id,
            created_at=c.created_at,
            created_by=names.get(c.created_by_id),
            patient_ref=c.patient_ref,
            patient_key=c.patient_key,
            note=c.note,
            image_count=len(c.images),
            top_labels=sorted({p.top_label for p in preds}),
            models=[ModelRef(name=n, version=v) for n, v in sorted(models)],
        )


class CaseList(BaseModel):
    items: list[CaseSummary]
    total: int


class CaseDetail(CaseSummary):
    images: list[ImagePublic]

    @classmethod
    def of_detail(cls, c: Case, names: dict[int, str]) -> CaseDetail:
        return cls(
            **CaseSummary.of(c, names).model_dump(),
            images=[ImagePublic.of(im, names) for im in c.images],
        )
