"""Administration pages: users, and the audit trail with its chain check."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clearscan.audit.actions import Action
from clearscan.audit.models import AuditEvent
from clearscan.audit.service import ChainReport
from clearscan.auth.models import Role, User
from clearscan.web.forms import Pagination
from clearscan.web.present.page import Page

ROLES = [r.value for r in Role]
ACTIONS = sorted(a.value for a in Action)  # the audit filter's suggestions
FIELD_HELP = {  # what the user form's fields accept, by field
    "username": "Username: 3 to 64 characters, letters, digits and _ . @ - only.",
    "password": "Password: at least 10 characters.",
    "role": "Role: choose admin, clinician or viewer.",
}


def empty_user_form() -> dict[str, str]:
    return {"username": "", "role": Role.clinician.value}


@dataclass(frozen=True, kw_only=True)
class UsersPage(Page):
    template = "users.html"
    users: Sequence[User]
    total: int
    roles: list[str]
    form: dict[str, str]  # the add-a-user form (never the password)
    error: str | None = None
    notice: str | None = None


@dataclass(frozen=True, kw_only=True)
class AuditPage(Page):
    template = "audit.html"
    events: Sequence[AuditEvent]
    params: dict[str, str]  # the filters applied
    chain: ChainReport
    actions: list[str]
    pages: Pagination
