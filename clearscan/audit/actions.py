"""Every action the audit trail records, in one enum.

Values are the strings stored in ``audit_events.action`` (a ``StrEnum`` member compares equal to
its value and is stored as it), so renaming a member is free but changing a value splits the
trail's history: add a new member instead. ``tests/audit/test_actions.py`` fails when the code
emits an action missing here, or when a member here is emitted nowhere.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Action"]


class Action(StrEnum):
    ACCESS_DENIED = "access.denied"
    ACCESS_DENIED_SUMMARY = "access.denied_summary"  # anonymous denials, counted per interval
    API_KEY_CREATE = "api_key.create"
    API_KEY_REVOKE = "api_key.revoke"
    AUDIT_ANCHOR = "audit.anchor"  # the head was anchored outside the database
    AUDIT_ARCHIVE = "audit.archive"  # checkpoint: a prefix of the chain moved to an archive
    AUDIT_EXPORT = "audit.export"
    AUDIT_KEY_CHECKPOINT = "audit.key_checkpoint"  # the chain continues under a new audit key
    AUTH_LOGIN = "auth.login"
    AUTH_LOGOUT = "auth.logout"
    BATCH_CANCEL = "batch.cancel"
    BATCH_SUBMIT = "batch.submit"
    CASE_CREATE = "case.create"
    CASE_LIST = "case.list"  # filters and row count, never the rows
    CASE_VIEW = "case.view"
    DATASET_IMPORT = "dataset.import"
    DATASET_ITEM_VIEW = "dataset.item_view"
    DATASET_IMPORT_SUBMIT = "dataset.import_submit"
    EVALUATION_SUBMIT = "evaluation.submit"
    FEATURES_PREVIEW = "features.preview"
    FEATURES_UPLOAD = "features.upload"
    HEATMAP_VIEW = "heatmap.view"
    MASK_VIEW = "mask.view"
    DICOM_EXPORT = "dicom.export"
    FINDING_REVIEW = "finding.review"
    IMAGE_ORIGINAL_VIEW = "image.original_view"  # an admin read an upload as received
    IMAGE_UPLOAD = "image.upload"
    IMAGE_VIEW = "image.view"
    MODEL_ACTIVATE = "model.activate"
    MODEL_IMPORT = "model.import"
    MODEL_REMOVE = "model.remove"
    MODEL_ROLLBACK = "model.rollback"
    MODEL_ROLLOUT = "model.rollout"
    MODEL_UNAVAILABLE = "model.unavailable"
    PREDICT = "predict"
    PREDICTION_CREATE = "prediction.create"
    REVIEW_CREATE = "review.create"
    TEAM_CREATE = "team.create"
    TEAM_CROSS_ACCESS = "team.cross_access"  # an admin opened a row outside their own teams
    TRAINING_CANCEL = "training.cancel"
    TRAINING_SUBMIT = "training.submit"
    USER_CREATE = "user.create"
    USER_UPDATE = "user.update"
