"""The auth service on its own: users, logins, browser sessions and the errors they raise, each
test in a transaction that is rolled back afterwards."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.audit.models import AuditEvent
from clearscan.auth import service
from clearscan.auth.models import Role, User, UserSession
from clearscan.errors import Conflict, NotFound
from tests.auth.conftest import PASSWORD, UserFactory

CTX = audit.RequestContext(actor="tester", client_addr="10.0.0.1")


def _events(db: Session, action: Action) -> list[AuditEvent]:
    rows = db.execute(
        select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
    )
    return list(rows.scalars())


def _limiter(max_failures: int = 3) -> service.LoginLimiter:
    return service.LoginLimiter(max_failures=max_failures, window_seconds=60)


def test_each_test_starts_from_an_empty_user_table(db: Session):
    assert db.scalar(select(func.count(User.id))) == 0
    # committed by the service, yet rolled back after the test: the next test never sees it
    service.create(db=db, ctx=CTX, username="leftover", password=PASSWORD, role=Role.admin)
    assert db.scalar(select(func.count(User.id))) == 1


def test_rows_from_other_tests_are_gone(db: Session):
    assert service.get_by_username(db=db, username="leftover") is None
    assert db.scalar(select(func.count(AuditEvent.seq))) == 0


def test_create_audits_and_refuses_a_duplicate(db: Session):
    user = service.create(
        db=db, ctx=CTX, username="dr.house", password=PASSWORD, role=Role.clinician
    )
    assert user.id is not None and user.role == "clinician" and user.password_hash != PASSWORD
    (event,) = _events(db, Action.USER_CREATE)
    assert event.actor == "tester" and event.object_id == str(user.id)
    assert event.details == {"username": "dr.house", "role": "clinician"}
    with pytest.raises(service.UserExists, match="already exists") as caught:
        service.create(db=db, ctx=CTX, username="dr.house", password=PASSWORD, role=Role.viewer)
    assert isinstance(caught.value, Conflict) and caught.value.status_code == 409


def test_require_raises_not_found(db: Session, make_user_row: UserFactory):
    user = make_user_row()
    assert service.require(db=db, user_id=user.id) is user
    with pytest.raises(service.UserNotFound, match="user 424242 not found") as caught:
        service.require(db=db, user_id=424242)
    assert isinstance(caught.value, NotFound) and caught.value.status_code == 404


def test_the_last_active_admin_cannot_be_demoted_or_disabled(
    db: Session, make_user_row: UserFactory
):
    admin = make_user_row(Role.admin)
    make_user_row(Role.admin, disabled=True)  # a disabled admin does not count
    for change in ({"role": Role.viewer}, {"disabled": True}):
        with pytest.raises(service.LastAdmin) as caught:
            service.update(db=db, ctx=CTX, user=admin, **change)  # type: ignore[arg-type]
        assert caught.value.status_code == 409
    other = make_user_row(Role.admin)
    service.update(db=db, ctx=CTX, user=admin, role=Role.viewer)
    assert admin.role == "viewer" and other.role == "admin"
    (event,) = _events(db, Action.USER_UPDATE)
    assert event.details["role"] == ["admin", "viewer"]


def test_password_change_or_disabling_revokes_sessions(db: Session, make_user_row: UserFactory):
    user = make_user_row()
    token, _ = service.start_session(db=db, user=user, minutes=5)
    db.flush()
    assert service.resolve_session(db=db, token=token) is not None
    service.update(db=db, ctx=CTX, user=user, password="a-brand-new-password")
    assert service.resolve_session(db=db, token=token) is None
    assert _events(db, Action.USER_UPDATE)[-1].details["password"] == "changed"


def test_login_succeeds_and_is_audited(db: Session, make_user_row: UserFactory):
    user = make_user_row(username="alice")
    found = service.login(
        db=db, ctx=CTX, limiter=_limiter(), username="alice", password=PASSWORD, via="api"
    )
    assert found is user and user.last_login_at is not None
    (event,) = _events(db, Action.AUTH_LOGIN)
    assert event.outcome == "success" and event.actor == "alice"
    assert event.details == {"via": "api"}


@pytest.mark.parametrize("disabled", [False, True])
def test_login_failure_is_401_and_audited(db: Session, make_user_row: UserFactory, disabled: bool):
    make_user_row(username="bob", disabled=disabled)
    password = PASSWORD if disabled else "wrong-wrong-wrong"
    with pytest.raises(service.LoginFailed, match="incorrect username or password") as caught:
        service.login(
            db=db, ctx=CTX, limiter=_limiter(), username="bob", password=password, via="api"
        )
    assert caught.value.status_code == 401
    assert caught.value.headers == {"WWW-Authenticate": "Bearer"}
    (event,) = _events(db, Action.AUTH_LOGIN)
    assert event.outcome == "failure" and event.actor == "bob"


def test_failures_back_off_per_user_and_address(db: Session, make_user_row: UserFactory):
    """Failures slow down only their own (username, address) pair, exponentially; the right
    password from another address is never held up by them."""
    make_user_row(username="carol")
    limiter = _limiter(max_failures=2)
    for _ in range(2):
        with pytest.raises(service.LoginFailed):
            service.login(
                db=db, ctx=CTX, limiter=limiter, username="carol", password="nope", via="api"
            )
    with pytest.raises(service.LoginThrottled) as caught:  # this address backs off: 1 s
        service.login(
            db=db, ctx=CTX, limiter=limiter, username="carol", password=PASSWORD, via="api"
        )
    err = caught.value
    assert err.status_code == 429 and err.retry_after == 1
    assert err.headers == {"Retry-After": "1"}
    other = audit.RequestContext(actor="tester", client_addr="10.9.9.9")
    user = service.login(
        db=db, ctx=other, limiter=limiter, username="carol", password=PASSWORD, via="api"
    )
    assert user.username == "carol"  # another address signs in at once
    outcomes = [e.outcome for e in _events(db, Action.AUTH_LOGIN)]
    assert outcomes == ["failure", "failure", "throttled", "success"]
    assert limiter.backoff(2) == 1 and limiter.backoff(3) == 2 and limiter.backoff(6) == 16
    assert limiter.backoff(40) == 900  # capped


def test_a_known_address_is_never_refused_the_right_password(
    db: Session, make_user_row: UserFactory
):
    make_user_row(username="cora")
    limiter = _limiter(max_failures=2)

    def attempt(password: str) -> None:
        service.login(
            db=db, ctx=CTX, limiter=limiter, username="cora", password=password, via="api"
        )

    attempt(PASSWORD)  # signs in from 10.0.0.1: remembered
    for _ in range(2):  # someone else behind the same address guesses
        with pytest.raises(service.LoginFailed):
            attempt("guess-guess-guess")
    with pytest.raises(service.LoginThrottled):  # a wrong password still backs off ...
        attempt("guess-guess-guess")
    attempt(PASSWORD)  # ... the right one is let in at once
    pair = limiter.pair("cora", CTX.client_addr)
    assert limiter.wait(pair) > 0  # and the guesser keeps waiting
    outcomes = [e.outcome for e in _events(db, Action.AUTH_LOGIN)]
    assert outcomes == ["success", "failure", "failure", "throttled", "success"]


def test_failed_logins_do_not_record_typed_usernames(db: Session, make_user_row: UserFactory):
    make_user_row(username="dana")
    typed = "MRN-004711"  # a patient identifier typed into the username field
    limiter = _limiter()
    for _ in range(2):
        with pytest.raises(service.LoginFailed):
            service.login(db=db, ctx=CTX, limiter=limiter, username=typed, password="x", via="api")
    first, second = _events(db, Action.AUTH_LOGIN)
    assert first.actor == service.UNKNOWN_USER and first.object_id is None
    assert typed not in repr(first.details) and typed.lower() not in repr(first.details)
    assert first.details["username_hmac"] == second.details["username_hmac"]  # correlatable
    with pytest.raises(service.LoginFailed):  # an existing account is named as the account
        service.login(db=db, ctx=CTX, limiter=_limiter(), username="dana", password="x", via="api")
    third = _events(db, Action.AUTH_LOGIN)[-1]
    assert third.actor == "dana" and third.details == {"via": "api"}


def test_password_change_and_disabling_move_the_token_version(
    db: Session, make_user_row: UserFactory
):
    user = make_user_row()
    assert user.token_version == 0
    service.update(db=db, ctx=CTX, user=user, password="a-brand-new-password")
    assert user.token_version == 1
    service.update(db=db, ctx=CTX, user=user, role=Role.viewer)  # a role change does not
    assert user.token_version == 1
    service.update(db=db, ctx=CTX, user=user, disabled=True)
    service.update(db=db, ctx=CTX, user=user, disabled=False)  # enabling does not bring back
    assert user.token_version == 2


def test_sign_in_replaces_the_previous_session_and_sign_out_ends_it(
    db: Session, make_user_row: UserFactory
):
    make_user_row(username="dave")

    def sign_in(previous: str | None = None) -> str:
        _, token = service.sign_in(
            db=db,
            ctx=CTX,
            limiter=_limiter(),
            username="dave",
            password=PASSWORD,
            minutes=10,
            previous_token=previous,
        )
        return token

    first = sign_in()
    user, _ = service.resolve_session(db=db, token=first) or (None, None)
    assert user is not None and user.username == "dave"
    second = sign_in(previous=first)
    assert service.resolve_session(db=db, token=first) is None
    assert service.resolve_session(db=db, token=second) is not None
    assert [e.details["via"] for e in _events(db, Action.AUTH_LOGIN)] == ["web", "web"]

    service.sign_out(db=db, ctx=CTX, user=user, token=second)
    assert service.resolve_session(db=db, token=second) is None
    (event,) = _events(db, Action.AUTH_LOGOUT)
    assert event.object_id == str(user.id)
    assert db.scalar(select(func.count(UserSession.id))) == 2


def test_ensure_admin_creates_admin_once(db: Session):
    generated = service.ensure_admin(db=db, password=None)
    assert generated and len(generated) >= 12
    assert service.ensure_admin(db=db, password=None) is None
    admin = service.get_by_username(db=db, username="admin")
    assert admin is not None and admin.role == "admin"
    assert _events(db, Action.USER_CREATE)[0].details["bootstrap"] is True


def test_audit_chain_stays_valid_across_service_commits(db: Session, make_user_row: UserFactory):
    user = make_user_row(Role.admin)
    service.update(db=db, ctx=CTX, user=user, disabled=False, role=Role.admin)
    service.create(db=db, ctx=CTX, username="erin", password=PASSWORD, role=Role.viewer)
    assert audit.verify_chain(db=db).ok
