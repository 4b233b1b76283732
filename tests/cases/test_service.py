"""The cases service on its own: saving an analysis (image and tabular), listing and reading
cases, and reviews, each test in a transaction that is rolled back afterwards (on SQLite, and on
PostgreSQL when it answers)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clearscan import errors
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.audit.models import AuditEvent
from clearscan.auth.models import Role
from clearscan.cases import service
from clearscan.cases.models import Case, Image, Prediction, Review
from clearscan.storage import LocalBlobStore
from tests.cases.conftest import (
    LABELS,
    T0,
    CaseFactory,
    ReviewFactory,
    UserFactory,
    classified,
    decoded,
    image_manifest,
    tabular_manifest,
    tabular_result,
)

CTX = audit.RequestContext(actor="tester", client_addr="10.0.0.9", request_id="req-1")
HEATMAP = b"\x89PNG fake heatmap bytes"


def _count(db: Session, model: type[Any]) -> int:
    return db.scalar(select(func.count()).select_from(model)) or 0


def _events(db: Session, action: Action | None = None) -> list[AuditEvent]:
    q = select(AuditEvent).order_by(AuditEvent.seq)
    if action is not None:
        q = q.where(AuditEvent.action == str(action))
    return list(db.execute(q).scalars())


# --- save_case ---------------------------------------------------------------------------------


def test_save_case_writes_case_images_predictions_blobs_and_audit(
    db: Session, blobs: LocalBlobStore, make_user_row: UserFactory
):
    user = make_user_row(username="dr.grey")
    manifest = image_manifest()
    uploads = [b"first upload", b"second upload"]
    results = [
        classified("pneumonia", image=decoded(fmt="dicom", modality="DX"), heatmap_png=HEATMAP),
        classified("normal", ood_score=1.7),
    ]
    case, preds = service.save_case(
        db=db,
        blobs=blobs,
        ctx=CTX,
        user=user,
        manifest=manifest,
        uploads=uploads,
        results=results,
        patient_ref="P-17",
        note="cough",
        explain_method="gradcam",
    )

    stored = db.get(Case, case.id)
    assert stored is not None and stored.created_by_id == user.id
    assert (stored.patient_ref, stored.note) == ("P-17", "cough")
    images = list(
        db.execute(select(Image).where(Image.case_id == case.id).order_by(Image.position)).scalars()
    )
    assert [im.position for im in images] == [0, 1]
    assert [blobs.get(im.sha256) for im in images] == uploads
    assert [im.size_bytes for im in images] == [len(u) for u in uploads]
    assert (images[0].format, images[0].modality, images[0].sop_uid) == ("dicom", "DX", "1.2.3.4.5")
    assert (images[1].format, images[1].width, images[1].height) == ("png", 64, 48)

    rows = {p.id: p for p in db.execute(select(Prediction)).scalars()}
    assert set(rows) == {p.id for p in preds} and len(preds) == 2
    first, second = (rows[p.id] for p in preds)
    assert [first.image_id, second.image_id] == [im.id for im in images]
    assert {first.case_id, second.case_id} == {case.id}
    assert (first.model_name, first.model_version, first.labels) == (
        "pneumonia-cxr",
        "1.0.0",
        LABELS,
    )
    assert (first.top_label, second.top_label) == ("pneumonia", "normal")
    assert first.probabilities == [0.1, 0.9]
    assert blobs.get(first.heatmap_sha256 or "") == HEATMAP
    assert first.heatmap_box == [1, 2, 41, 42]
    assert first.details == {"explain_method": "gradcam"}
    # no heatmap: no box, no explain method; the out-of-domain score is kept
    assert (second.heatmap_sha256, second.heatmap_box) == (None, None)
    assert second.details == {"ood_score": 1.7}

    events = _events(db)
    assert [e.action for e in events] == [
        Action.CASE_CREATE,
        Action.IMAGE_UPLOAD,
        Action.PREDICTION_CREATE,
        Action.IMAGE_UPLOAD,
        Action.PREDICTION_CREATE,
    ]
    assert [e.object_id for e in events] == [
        case.id,
        images[0].id,
        first.id,
        images[1].id,
        second.id,
    ]
    assert events[1].details == {"format": "dicom", "bytes": len(uploads[0])}
    assert events[2].details == {"model": "pneumonia-cxr:1.0.0", "top_label": "pneumonia"}
    assert {(e.actor, e.client_addr, e.request_id) for e in events} == {
        ("tester", "10.0.0.9", "req-1")
    }
    assert audit.verify_chain(db=db).ok


def test_save_case_uses_the_given_id_and_stores_blank_refs_as_null(
    db: Session, blobs: LocalBlobStore, make_user_row: UserFactory
):
    case, (pred,) = service.save_case(
        case_id="00000000-0000-4000-8000-000000000001",
        db=db,
        blobs=blobs,
        ctx=CTX,
        user=make_user_row(),
        manifest=image_manifest(),
        uploads=[b"x"],
        results=[classified("normal")],
        patient_ref="",
        note="",
    )
    assert case.id == pred.case_id == "00000000-0000-4000-8000-000000000001"
    row = db.get(Case, case.id)
    assert row is not None and (row.patient_ref, row.note) == (None, None)


def test_save_case_commits_rows_and_events_together(
    db: Session, blobs: LocalBlobStore, make_user_row: UserFactory
):
    case, (pred,) = service.save_case(
        db=db,
        blobs=blobs,
        ctx=CTX,
        user=make_user_row(),
        manifest=image_manifest(),
        uploads=[b"x"],
        results=[classified()],
        patient_ref=None,
        note=None,
    )
    db.rollback()  # undoes only what was not committed
    assert db.get(Case, case.id) is not None and db.get(Prediction, pred.id) is not None
    assert [e.object_id for e in _events(db, Action.CASE_CREATE)] == [case.id]


def test_save_case_writes_nothing_when_the_audit_append_fails(
    db: Session, blobs: LocalBlobStore, make_user_row: UserFactory, monkeypatch: pytest.MonkeyPatch
):
    user = make_user_row()
    db.commit()  # keep the user; what follows must vanish with the failed transaction

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr(audit, "append", broken)
    with pytest.raises(RuntimeError, match="audit store down"):
        service.save_case(
            db=db,
            blobs=blobs,
            ctx=CTX,
            user=user,
            manifest=image_manifest(),
            uploads=[b"x"],
            results=[classified()],
            patient_ref=None,
            note=None,
        )
    db.rollback()
    assert (_count(db, Case), _count(db, Image), _count(db, Prediction)) == (0, 0, 0)
    assert _events(db) == []


def test_save_case_refuses_uploads_and_results_of_different_lengths(
    db: Session, blobs: LocalBlobStore, make_user_row: UserFactory
):
    with pytest.raises(ValueError, match="2 uploads but 1 results"):
        service.save_case(
            db=db,
            blobs=blobs,
            ctx=CTX,
            user=make_user_row(),
            manifest=image_manifest(),
            uploads=[b"a", b"b"],
            results=[classified()],
            patient_ref=None,
            note=None,
        )
    assert (_count(db, Case), _count(db, Image), _count(db, Prediction)) == (0, 0, 0)
    assert _events(db) == []
    assert not blobs.exists(hashlib.sha256(b"a").hexdigest())  # checked before storing


# --- save_tabular_case -------------------------------------------------------------------------


def test_save_tabular_case_stores_values_blob_features_row_and_prediction(
    db: Session, blobs: LocalBlobStore, make_user_row: UserFactory
):
    user = make_user_row()
    manifest = tabular_manifest()
    values = {"age": 61, "smoker": "yes", "not_a_feature": 1}  # bmi missing
    case, pred = service.save_tabular_case(
        db=db,
        blobs=blobs,
        ctx=CTX,
        user=user,
        manifest=manifest,
        values=values,
        window={"hr": [60, 61, 62, 63]},
        result=tabular_result("high", ood_score=0.4),
        patient_ref="P-9",
        note="follow-up",
    )

    row = db.get(Case, case.id)
    assert row is not None and (row.created_by_id, row.patient_ref) == (user.id, "P-9")
    (image,) = db.execute(select(Image).where(Image.case_id == case.id)).scalars()
    assert (image.format, image.position, image.width, image.height) == ("features", 0, 3, 1)
    payload = blobs.get(image.sha256)
    assert image.size_bytes == len(payload)
    assert json.loads(payload) == {
        "model": "risk-tab:2.1.0",
        "features": {"age": 61, "bmi": None, "smoker": "yes"},  # manifest features only
        "window": {"hr": [60, 61, 62, 63]},
    }

    stored = db.get(Prediction, pred.id)
    assert stored is not None and (stored.image_id, stored.case_id) == (image.id, case.id)
    assert (stored.model_name, stored.model_version) == ("risk-tab", "2.1.0")
    assert (stored.labels, stored.probabilities, stored.top_label) == (
        ["low", "high"],
        [0.25, 0.75],
        "high",
    )
    assert stored.heatmap_sha256 is None and stored.inference_ms == 3.25
    assert stored.details == {
        "contributions": [
            {"feature": "age", "value": 61, "contribution": 0.4},
            {"feature": "smoker", "value": "yes", "contribution": -0.1},
        ],
        "ood_score": 0.4,
    }

    events = _events(db)
    assert [(e.action, e.object_id) for e in events] == [
        (Action.CASE_CREATE, case.id),
        (Action.FEATURES_UPLOAD, image.id),
        (Action.PREDICTION_CREATE, pred.id),
    ]
    assert events[1].details == {"features": 3, "bytes": len(payload)}
    assert events[2].details == {"model": "risk-tab:2.1.0", "top_label": "high"}
    assert audit.verify_chain(db=db).ok


def test_save_tabular_case_without_window_or_ood_and_commits(
    db: Session, blobs: LocalBlobStore, make_user_row: UserFactory
):
    case, pred = service.save_tabular_case(
        case_id="00000000-0000-4000-8000-0000000000aa",
        db=db,
        blobs=blobs,
        ctx=CTX,
        user=make_user_row(),
        manifest=tabular_manifest(),
        values={"age": 40, "bmi": 22.5, "smoker": "no"},
        result=tabular_result("low"),
        patient_ref=None,
        note=None,
    )
    assert case.id == "00000000-0000-4000-8000-0000000000aa"
    db.rollback()  # committed: the rows and events survive
    image = db.get(Image, pred.image_id)
    assert image is not None and "window" not in json.loads(blobs.get(image.sha256))
    stored = db.get(Prediction, pred.id)
    assert stored is not None and "ood_score" not in stored.details
    assert len(_events(db, Action.FEATURES_UPLOAD)) == 1


@pytest.mark.parametrize("kind", ["image", "tabular"])
def test_blank_patient_ref_and_note_are_stored_as_null_by_both_save_functions(
    db: Session, blobs: LocalBlobStore, make_user_row: UserFactory, kind: str
):
    """The image and tabular paths treat an empty patient_ref / note alike (the JSON features
    route passes the body's strings through unchanged)."""
    common: dict[str, Any] = {
        "db": db,
        "blobs": blobs,
        "ctx": CTX,
        "user": make_user_row(),
        "patient_ref": "",
        "note": "",
    }
    if kind == "image":
        case, _ = service.save_case(
            manifest=image_manifest(), uploads=[b"x"], results=[classified()], **common
        )
    else:
        case, _ = service.save_tabular_case(
            manifest=tabular_manifest(), values={"age": 1}, result=tabular_result(), **common
        )
    row = db.get(Case, case.id)
    assert row is not None
    assert (row.patient_ref, row.note) == (None, None)


# --- list_cases / list_case_summaries ----------------------------------------------------------


def test_list_orders_newest_first_with_id_as_tie_breaker_and_pages(
    db: Session, make_case_row: CaseFactory, make_user_row: UserFactory
):
    user = make_user_row(username="lister")
    old = make_case_row(user, created_at=T0)
    tie_b = make_case_row(user, created_at=T0 + timedelta(hours=1), case_id="b" * 8)
    tie_a = make_case_row(user, created_at=T0 + timedelta(hours=1), case_id="a" * 8)
    new = make_case_row(user, created_at=T0 + timedelta(days=1))

    items, total = service.list_case_summaries(db=db)
    assert total == 4
    assert [s.id for s in items] == [new.id, tie_a.id, tie_b.id, old.id]

    pages = [service.list_case_summaries(db=db, limit=3, offset=off) for off in (0, 3, 6)]
    assert [[s.id for s in page] for page, _ in pages] == [
        [new.id, tie_a.id, tie_b.id],
        [old.id],
        [],
    ]
    assert {t for _, t in pages} == {4}  # the total ignores paging


def test_summaries_name_the_creator_and_summarise_images_labels_and_models(
    db: Session, make_case_row: CaseFactory, make_user_row: UserFactory
):
    user = make_user_row(username="dr.summary")
    case = make_case_row(
        user,
        images=[
            ("pneumonia-cxr", "1.1.0", "pneumonia"),
            ("pneumonia-cxr", "1.0.0", "normal"),
            ("pneumonia-cxr", "1.1.0", "pneumonia"),
        ],
        patient_ref="P-1",
        note="n",
    )
    (summary,), total = service.list_case_summaries(db=db)
    assert total == 1
    assert (summary.id, summary.created_by, summary.patient_ref, summary.note) == (
        case.id,
        "dr.summary",
        "P-1",
        "n",
    )
    assert summary.created_at == T0
    assert summary.image_count == 3
    assert summary.top_labels == ["normal", "pneumonia"]
    assert [(m.name, m.version) for m in summary.models] == [
        ("pneumonia-cxr", "1.0.0"),
        ("pneumonia-cxr", "1.1.0"),
    ]


def test_list_filters_by_top_label_of_any_image_counting_each_case_once(
    db: Session, make_case_row: CaseFactory
):
    mixed = make_case_row(
        images=[("m", "1.0.0", "pneumonia"), ("m", "1.0.0", "pneumonia"), ("m", "1.0.0", "normal")],
        created_at=T0,
    )
    normal = make_case_row(images=[("m", "1.0.0", "normal")], created_at=T0 + timedelta(hours=1))
    make_case_row(images=[("m", "1.0.0", "normal")], created_at=T0 + timedelta(hours=2))

    items, total = service.list_case_summaries(db=db, label="pneumonia")
    assert ([s.id for s in items], total) == ([mixed.id], 1)
    items, total = service.list_case_summaries(db=db, label="normal", limit=2)
    assert total == 3 and len(items) == 2
    assert service.list_case_summaries(db=db, label="no-such-label") == ([], 0)
    rows, total = service.list_cases(db=db, label="normal", offset=1)
    assert [c.id for c in rows] == [normal.id, mixed.id] and total == 3


def test_list_filters_by_creator_username(
    db: Session, make_case_row: CaseFactory, make_user_row: UserFactory
):
    alice, bob = make_user_row(username="alice"), make_user_row(username="bob")
    a1 = make_case_row(alice, created_at=T0)
    a2 = make_case_row(alice, created_at=T0 + timedelta(minutes=5))
    make_case_row(bob, created_at=T0 + timedelta(minutes=10))

    items, total = service.list_case_summaries(db=db, username="alice")
    assert ([s.id for s in items], total) == ([a2.id, a1.id], 2)
    assert {s.created_by for s in items} == {"alice"}
    assert service.list_case_summaries(db=db, username="nobody") == ([], 0)


def test_list_date_window_includes_since_excludes_until_and_respects_offsets(
    db: Session, make_case_row: CaseFactory
):
    before = make_case_row(created_at=T0 - timedelta(seconds=1))
    at_start = make_case_row(created_at=T0)
    inside = make_case_row(created_at=T0 + timedelta(hours=5))
    at_end = make_case_row(created_at=T0 + timedelta(days=1))

    def ids(**kw: Any) -> tuple[list[str], int]:
        items, total = service.list_case_summaries(db=db, **kw)
        return [s.id for s in items], total

    end = T0 + timedelta(days=1)
    assert ids(since=T0, until=end) == ([inside.id, at_start.id], 2)
    assert ids(since=T0) == ([at_end.id, inside.id, at_start.id], 3)
    assert ids(until=T0) == ([before.id], 1)
    # the same instant written in another time zone selects the same cases
    plus2 = timezone(timedelta(hours=2))
    assert ids(since=T0.astimezone(plus2), until=end.astimezone(plus2)) == (
        [inside.id, at_start.id],
        2,
    )


def test_list_combines_filters(db: Session, make_case_row: CaseFactory, make_user_row: UserFactory):
    carol, dan = make_user_row(username="carol"), make_user_row(username="dan")
    hit = make_case_row(carol, images=[("m", "1.0.0", "pneumonia")], created_at=T0)
    make_case_row(carol, images=[("m", "1.0.0", "normal")], created_at=T0)
    make_case_row(dan, images=[("m", "1.0.0", "pneumonia")], created_at=T0)
    make_case_row(carol, images=[("m", "1.0.0", "pneumonia")], created_at=T0 - timedelta(days=2))

    items, total = service.list_case_summaries(
        db=db, label="pneumonia", username="carol", since=T0 - timedelta(days=1)
    )
    assert ([s.id for s in items], total) == ([hit.id], 1)


def test_listing_reads_only_and_never_commits(db: Session, make_case_row: CaseFactory):
    case = make_case_row()  # flushed, not committed
    items, total = service.list_case_summaries(db=db)
    assert total == 1 and items[0].id == case.id
    assert _events(db) == []  # listing is not audited
    db.rollback()
    assert db.get(Case, case.id) is None


# --- get_case / view_case / get_image / get_prediction / usernames -----------------------------


def test_view_case_returns_detail_with_reviews_and_audits_the_view(
    db: Session,
    make_case_row: CaseFactory,
    make_user_row: UserFactory,
    make_review_row: ReviewFactory,
):
    owner, reviewer = make_user_row(username="owner"), make_user_row(username="reviewer")
    case = make_case_row(owner, images=[("m", "1.0.0", "normal"), ("m", "1.0.0", "pneumonia")])
    first_pred = case.images[0].predictions[0]
    make_review_row(first_pred, reviewer, agree=False, correct_label="pneumonia", comment="opacity")

    detail = service.view_case(db=db, ctx=CTX, case_id=case.id)
    assert (detail.id, detail.created_by, detail.image_count) == (case.id, "owner", 2)
    assert [im.position for im in detail.images] == [0, 1]
    assert [im.id for im in detail.images] == [im.id for im in case.images]
    assert detail.images[0].file_url == f"/api/v1/images/{case.images[0].id}/file"
    (review,) = detail.images[0].predictions[0].reviews
    assert (review.user, review.agree, review.correct_label, review.comment) == (
        "reviewer",
        False,
        "pneumonia",
        "opacity",
    )
    assert detail.images[1].predictions[0].reviews == []

    (event,) = _events(db, Action.CASE_VIEW)
    assert (event.object_type, event.object_id, event.actor) == ("case", case.id, "tester")
    db.rollback()  # the view and its event were committed
    assert [e.object_id for e in _events(db, Action.CASE_VIEW)] == [case.id]


def test_unknown_case_is_not_found_404_and_not_audited(db: Session, make_case_row: CaseFactory):
    make_case_row()
    with pytest.raises(service.NotFound, match="case missing-id not found") as caught:
        service.view_case(db=db, ctx=CTX, case_id="missing-id")
    assert caught.value.status_code == 404
    assert isinstance(caught.value, errors.NotFound) and isinstance(caught.value, service.CaseError)
    assert _events(db, Action.CASE_VIEW) == []
    with pytest.raises(service.NotFound):
        service.get_case(db=db, case_id="missing-id")


def test_get_case_image_and_prediction_by_id(db: Session, make_case_row: CaseFactory):
    case = make_case_row(images=[("m", "1.0.0", "normal"), ("m", "1.0.0", "pneumonia")])
    image = case.images[1]
    pred = image.predictions[0]
    assert service.get_case(db=db, case_id=case.id) is case
    assert service.get_image(db=db, image_id=image.id) is image
    found = service.get_prediction(db=db, prediction_id=pred.id)
    assert found is pred and found.case_id == case.id and found.top_label == "pneumonia"
    for call, kw, what in (
        (service.get_image, {"image_id": "nope"}, "image nope"),
        (service.get_prediction, {"prediction_id": "nope"}, "prediction nope"),
    ):
        with pytest.raises(service.NotFound, match=f"{what} not found") as caught:
            call(db=db, **kw)
        assert caught.value.status_code == 404


def test_usernames_maps_known_ids_only(db: Session, make_user_row: UserFactory):
    a, b = make_user_row(username="ua"), make_user_row(username="ub")
    assert service.usernames(db=db, ids={a.id, b.id, 987654}) == {a.id: "ua", b.id: "ub"}
    assert service.usernames(db=db, ids=set()) == {}


# --- add_review --------------------------------------------------------------------------------


def test_agreeing_review_takes_the_top_label_is_audited_and_committed(
    db: Session, make_case_row: CaseFactory, make_user_row: UserFactory
):
    reviewer = make_user_row(Role.clinician, username="rev")
    pred = make_case_row(images=[("m", "1.0.0", "pneumonia")]).images[0].predictions[0]
    review = service.add_review(
        db=db, ctx=CTX, user=reviewer, prediction=pred, agree=True, correct_label="", comment=""
    )
    assert (review.prediction_id, review.user_id, review.agree) == (pred.id, reviewer.id, True)
    assert (review.correct_label, review.comment) == ("pneumonia", None)
    (event,) = _events(db, Action.REVIEW_CREATE)
    assert (event.object_type, event.object_id) == ("prediction", pred.id)
    assert event.details == {"review_id": review.id, "agree": True}
    db.rollback()  # committed together
    stored = db.get(Review, review.id)
    assert stored is not None and stored.correct_label == "pneumonia"
    assert len(_events(db, Action.REVIEW_CREATE)) == 1


def test_disagreeing_review_with_a_model_label_is_stored(
    db: Session, make_case_row: CaseFactory, make_user_row: UserFactory
):
    reviewer = make_user_row()
    pred = make_case_row(images=[("m", "1.0.0", "pneumonia")]).images[0].predictions[0]
    review = service.add_review(
        db=db,
        ctx=CTX,
        user=reviewer,
        prediction=pred,
        agree=False,
        correct_label="normal",
        comment="clear lungs",
    )
    stored = db.get(Review, review.id)
    assert stored is not None
    assert (stored.agree, stored.correct_label, stored.comment) == (False, "normal", "clear lungs")
    assert _events(db, Action.REVIEW_CREATE)[0].details["agree"] is False


@pytest.mark.parametrize(
    ("agree", "label", "message"),
    [
        (False, "fracture", "correct_label 'fracture' is not one of normal, pneumonia"),
        (False, None, "a disagreeing review must give correct_label"),
        (False, "", "a disagreeing review must give correct_label"),
        (True, "normal", "an agreeing review cannot name a different label"),
    ],
)
def test_invalid_review_is_422_and_stores_nothing(
    db: Session,
    make_case_row: CaseFactory,
    make_user_row: UserFactory,
    agree: bool,
    label: str | None,
    message: str,
):
    reviewer = make_user_row()
    pred = make_case_row(images=[("m", "1.0.0", "pneumonia")]).images[0].predictions[0]
    with pytest.raises(service.InvalidReview) as caught:
        service.add_review(
            db=db,
            ctx=CTX,
            user=reviewer,
            prediction=pred,
            agree=agree,
            correct_label=label,
            comment=None,
        )
    assert caught.value.detail == message and caught.value.status_code == 422
    assert _count(db, Review) == 0 and _events(db, Action.REVIEW_CREATE) == []


def test_a_review_stays_with_its_own_case(
    db: Session, make_case_row: CaseFactory, make_user_row: UserFactory
):
    """add_review takes the prediction, not a case: callers that address a prediction through a
    case (the web page) refuse one whose `case_id` differs, and a review never shows up under
    another case."""
    reviewer = make_user_row(username="rev2")
    case_a = make_case_row(images=[("m", "1.0.0", "pneumonia")])
    case_b = make_case_row(images=[("m", "1.0.0", "pneumonia")])
    pred_a = case_a.images[0].predictions[0]

    found = service.get_prediction(db=db, prediction_id=pred_a.id)
    assert found.case_id == case_a.id != case_b.id
    service.add_review(
        db=db,
        ctx=CTX,
        user=reviewer,
        prediction=found,
        agree=True,
        correct_label=None,
        comment=None,
    )
    db.expire_all()
    detail_a = service.view_case(db=db, ctx=CTX, case_id=case_a.id)
    detail_b = service.view_case(db=db, ctx=CTX, case_id=case_b.id)
    assert [r.user for r in detail_a.images[0].predictions[0].reviews] == ["rev2"]
    assert detail_b.images[0].predictions[0].reviews == []


def test_audit_chain_stays_valid_across_the_service_commits(
    db: Session, blobs: LocalBlobStore, make_user_row: UserFactory
):
    user = make_user_row()
    case, (pred,) = service.save_case(
        db=db,
        blobs=blobs,
        ctx=CTX,
        user=user,
        manifest=image_manifest(),
        uploads=[b"x"],
        results=[classified()],
        patient_ref=None,
        note=None,
    )
    service.save_tabular_case(
        db=db,
        blobs=blobs,
        ctx=CTX,
        user=user,
        manifest=tabular_manifest(),
        values={"age": 3},
        result=tabular_result(),
        patient_ref=None,
        note=None,
    )
    service.add_review(
        db=db, ctx=CTX, user=user, prediction=pred, agree=True, correct_label=None, comment=None
    )
    service.view_case(db=db, ctx=CTX, case_id=case.id)
    report = audit.verify_chain(db=db)
    assert report.ok and report.checked == 3 + 3 + 1 + 1
    assert datetime.now(UTC) - _events(db)[-1].at < timedelta(minutes=5)
