"""Analysis and case pages: the new-analysis form, the case list, and one case's images with
their predictions, probability bars, intended-use notes and review forms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from clearscan.cases.schemas import CaseDetail, CaseSummary, ImagePublic, PredictionWithReviews
from clearscan.config import Settings
from clearscan.imaging.render import DEFAULT_PRESET, PERCENTILE_PRESETS, WINDOW_PRESETS
from clearscan.registry.catalog import ModelEntry
from clearscan.registry.errors import ModelNotFound
from clearscan.registry.routing import ModelRegistry
from clearscan.web.forms import Pagination
from clearscan.web.present.page import Page
from clearscan.web.templating import format_bytes


@dataclass(frozen=True)
class ModelNote:
    """The intended-use statement of a model, shown wherever its output is."""

    name: str
    version: str
    text: str

    @property
    def not_for_clinical_use(self) -> bool:
        return "not for clinical use" in self.text.lower()


def model_note(entry: ModelEntry) -> ModelNote | None:
    m = entry.manifest
    return ModelNote(m.name, m.version, m.intended_use) if m.intended_use else None


# --- new analysis -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalyzeForm:
    """What the analysis form shows (and shows again after a refusal)."""

    model: str
    explain: bool = True
    patient_ref: str = ""
    note: str = ""
    team: str = ""  # for a user in several teams: the team the case belongs to


@dataclass(frozen=True, kw_only=True)
class AnalyzePage(Page):
    template = "analyze.html"
    entries: list[ModelEntry]
    notes: dict[str, ModelNote | None]  # by model name
    values: AnalyzeForm
    settings: Settings
    error: str | None = None
    teams: list[str] = field(default_factory=list)  # the user's teams (a choice when several)


def analyze_page(
    entries: list[ModelEntry],
    settings: Settings,
    values: AnalyzeForm | None = None,
    error: str | None = None,
    teams: Sequence[str] = (),
) -> AnalyzePage:
    return AnalyzePage(
        entries=entries,
        notes={e.manifest.name: model_note(e) for e in entries},
        values=values or AnalyzeForm(model=settings.default_model),
        settings=settings,
        error=error,
        teams=list(teams),
    )


# --- case list --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CasesPage(Page):
    template = "cases.html"
    errors: list[str]  # filters that were ignored, and why
    items: list[CaseSummary]
    labels: list[str]  # the label filter's choices
    params: dict[str, str]  # the filters applied (kept in the pagination links)
    pages: Pagination


# --- one case ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbRow:
    label: str
    probability: float
    is_top: bool

    @property
    def percent(self) -> float:
        return round(self.probability * 100, 1)


@dataclass
class PredictionView:
    p: PredictionWithReviews
    rows: list[ProbRow]
    note: ModelNote | None
    model_known: bool  # the model is still installed


# Colours of segmentation classes 1, 2, ... on the case page (distinct on grayscale images and
# for the common colour-vision deficiencies: Okabe-Ito).
MASK_COLOURS = ("#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7")


@dataclass
class ImagePanel:
    image: ImagePublic
    presets: list[str]
    predictions: list[PredictionView]
    overlay: PredictionWithReviews | None = None  # the prediction whose heatmap is overlaid
    facts: list[tuple[str, str]] = field(default_factory=list)
    mask: PredictionWithReviews | None = None  # the segmentation whose label map is overlaid

    @property
    def mask_classes(self) -> list[tuple[int, str, str]]:
        """(value, label, colour) of each class of the overlaid label map but the background,
        for the legend and static/clearscan.js (which colours value i with the i-th colour)."""
        if self.mask is None:
            return []
        return [
            (i, label, MASK_COLOURS[(i - 1) % len(MASK_COLOURS)])
            for i, label in enumerate(self.mask.labels)
            if i > 0
        ]

    @property
    def mask_palette(self) -> str:
        """The colours of classes 1, 2, ... as "#rrggbb,#rrggbb" (data-palette)."""
        return ",".join(colour for _, _, colour in self.mask_classes)

    @property
    def box(self) -> str:
        """Heatmap box "x0,y0,x1,y1" in original image pixels, for static/app.js."""
        box = self.overlay.heatmap_box if self.overlay else None
        return ",".join(str(int(v)) for v in box) if box else ""


@dataclass(frozen=True, kw_only=True)
class CasePage(Page):
    template = "case.html"
    case: CaseDetail
    panels: list[ImagePanel]
    labels: list[str]  # every label of the case's predictions (the review form's choices)
    review_error: dict[str, str]  # by prediction id
    review_form: dict[str, dict[str, str]]  # by prediction id


def presets_for(fmt: str, modality: str | None, channels: int) -> list[str]:
    """Preset names the preview endpoint accepts for an image (see imaging.available_presets):
    absolute windows for DICOM CT (lung, mediastinum, bone, brain, abdomen, ...), percentile
    contrast presets (auto, soft, full: the MR presets) for other grayscale images; none for
    colour images."""
    if channels != 1:
        return []
    mod = (modality or "").upper()
    if fmt == "dicom" and mod in WINDOW_PRESETS:
        return [DEFAULT_PRESET, *WINDOW_PRESETS[mod]]
    return [DEFAULT_PRESET, *PERCENTILE_PRESETS]


def _lookup(registry: ModelRegistry, name: str) -> ModelEntry | None:
    try:
        return registry.get(name)
    except ModelNotFound:
        return None


def _facts(im: ImagePublic) -> list[tuple[str, str]]:
    return [
        ("Format", im.format.upper()),
        ("Modality", im.modality or "—"),
        ("Size", f"{im.width} \u00d7 {im.height} px"),
        ("Bit depth", f"{im.bit_depth}-bit"),
        ("Channels", str(im.channels)),
        ("Frames", f"{im.frames} (showing {im.frame_index + 1})" if im.frames > 1 else "1"),
        ("File size", format_bytes(im.size_bytes)),
    ]


def image_panels(images: Sequence[ImagePublic], registry: ModelRegistry) -> list[ImagePanel]:
    panels = []
    for im in images:
        preds = []
        for p in im.predictions:
            entry = _lookup(registry, p.model.name)
            top = p.labels.index(p.top_label) if p.top_label in p.labels else -1
            rows = [
                ProbRow(label, prob, i == top)
                for i, (label, prob) in enumerate(zip(p.labels, p.probabilities, strict=False))
            ]
            preds.append(
                PredictionView(
                    p=p,
                    rows=rows,
                    note=model_note(entry) if entry else None,
                    model_known=entry is not None,
                )
            )
        overlay = next((p for p in im.predictions if p.heatmap_url and p.heatmap_box), None)
        panels.append(
            ImagePanel(
                image=im,
                presets=presets_for(im.format, im.modality, im.channels),
                predictions=preds,
                overlay=overlay,
                facts=_facts(im),
                mask=next((p for p in im.predictions if p.mask_url), None),
            )
        )
    return panels


def case_page(
    case: CaseDetail,
    registry: ModelRegistry,
    *,
    review_error: dict[str, str] | None = None,
    review_form: dict[str, dict[str, str]] | None = None,
) -> CasePage:
    return CasePage(
        case=case,
        panels=image_panels(case.images, registry),
        labels=sorted({lb for im in case.images for p in im.predictions for lb in p.labels}),
        review_error=review_error or {},
        review_form=review_form or {},
    )
