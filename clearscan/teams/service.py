"""Teams and team ownership. Keyword-only functions that take the DB session and raise domain
errors; the ones that change something commit.

Ownership: a case, a dataset and a job (batch, training run, evaluation) belong to one team.
A :class:`Scope` says what one signed-in user may see: administrators every team's rows, anyone
else the rows of their own teams only (none when they belong to no team). Lists filter in SQL
(:meth:`Scope.where`); reading one object by id goes through :func:`check`, which answers a row
of another team exactly as a missing id (404, the caller's error) and audits an administrator's
access to a row outside the administrator's own teams."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, delete, false, func, insert, select, true
from sqlalchemy.orm import QueryableAttribute, Session

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.errors import ClearScanError, Conflict, Unprocessable
from clearscan.teams.models import DEFAULT_TEAM, Team, TeamMember
from clearscan.teams.schemas import TEAM_NAME_PATTERN

if TYPE_CHECKING:
    from clearscan.auth.models import User

__all__ = [
    "DEFAULT_TEAM",
    "NoTeam",
    "Scope",
    "TeamExists",
    "TeamUnknown",
    "check",
    "create",
    "default_team_id",
    "list_teams",
    "member_counts",
    "names_of",
    "scope_of",
    "set_memberships",
    "team_for_new_row",
]

ADMIN = "admin"  # the value of Role.admin (auth sits above this package)
_NAME = re.compile(TEAM_NAME_PATTERN)


class TeamExists(Conflict):
    """A team of this name exists (409)."""


class TeamUnknown(Unprocessable):
    """A request names a team that does not exist, or one the user is not in (422)."""


class NoTeam(Unprocessable):
    """The user belongs to no team, or to several and named none: nothing can be created (422)."""


@dataclass(frozen=True)
class Scope:
    """What one signed-in user may see. `ctx` is the request, for auditing an administrator's
    access to another team's row."""

    user_id: int
    admin: bool
    team_ids: frozenset[int]
    ctx: audit.RequestContext = field(default_factory=audit.RequestContext)

    def where(
        self, column: QueryableAttribute[int | None] | ColumnElement[int | None]
    ) -> ColumnElement[bool]:
        """The SQL condition on a `team_id` column for the rows this user may see."""
        if self.admin:
            return true()
        if not self.team_ids:
            return false()
        return column.in_(sorted(self.team_ids))

    def sees(self, team_id: int | None) -> bool:
        return self.admin or (team_id is not None and team_id in self.team_ids)

    def crosses(self, team_id: int | None) -> bool:
        """An administrator looking at a row outside the administrator's own teams."""
        return self.admin and (team_id is None or team_id not in self.team_ids)


def team_ids_of(*, db: Session, user_id: int) -> frozenset[int]:
    rows = db.scalars(select(TeamMember.team_id).where(TeamMember.user_id == user_id))
    return frozenset(rows.all())


def scope_of(*, db: Session, user: User, ctx: audit.RequestContext | None = None) -> Scope:
    return Scope(
        user_id=user.id,
        admin=user.role == ADMIN,
        team_ids=team_ids_of(db=db, user_id=user.id),
        ctx=ctx or audit.RequestContext(actor=user.username),
    )


def check(
    *,
    db: Session,
    scope: Scope | None,
    team_id: int | None,
    object_type: str,
    object_id: str,
    missing: ClearScanError,
) -> None:
    """Raise `missing` (the caller's "not found" error, so the reply is the same as for a missing
    id) when `scope` may not see a row of `team_id`; audit (and commit) an administrator's access
    outside their own teams. A None scope (the CLI, a job) sees everything, unaudited."""
    if scope is None:
        return
    if not scope.sees(team_id):
        raise missing
    if scope.crosses(team_id):
        audit.record(
            audit.Entry(
                Action.TEAM_CROSS_ACCESS,
                object_type=object_type,
                object_id=object_id,
                details={"team": _name_of(db, team_id)},
            ),
            db=db,
            ctx=scope.ctx,
        )


def _name_of(db: Session, team_id: int | None) -> str | None:
    if team_id is None:
        return None
    return db.scalar(select(Team.name).where(Team.id == team_id))


# --- teams ----------------------------------------------------------------------------------------


def get_by_name(*, db: Session, name: str) -> Team | None:
    return db.scalar(select(Team).where(Team.name == name))


def default_team_id(*, db: Session) -> int:
    """The id of the team `general`, created here if a database lacks it (the migration creates
    it; it is never deleted)."""
    found = db.scalar(select(Team.id).where(Team.name == DEFAULT_TEAM))
    if found is not None:
        return found
    team = Team(name=DEFAULT_TEAM)
    db.add(team)
    db.flush()
    return team.id


def create(*, db: Session, ctx: audit.RequestContext, name: str) -> Team:
    """A new team (TeamExists, 409, for a name in use; TeamUnknown, 422, for a bad name)."""
    if not _NAME.fullmatch(name):
        raise TeamUnknown(
            "a team name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
            "a digit"
        )
    if get_by_name(db=db, name=name) is not None:
        raise TeamExists(f"team {name!r} already exists")
    team = Team(name=name)
    db.add(team)
    db.flush()
    audit.append(
        audit.Entry(
            Action.TEAM_CREATE, object_type="team", object_id=str(team.id), details={"name": name}
        ),
        db=db,
        ctx=ctx,
    )
    db.commit()
    return team


def list_teams(
    *, db: Session, scope: Scope | None, limit: int = 100, offset: int = 0
) -> tuple[list[Team], int]:
    """Every team for an administrator (or a None scope); a user's own teams otherwise."""
    q = select(Team)
    if scope is not None and not scope.admin:
        q = q.where(Team.id.in_(sorted(scope.team_ids)) if scope.team_ids else false())
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = db.scalars(q.order_by(Team.name).limit(limit).offset(offset))
    return list(rows.all()), total


def member_counts(*, db: Session, team_ids: Iterable[int]) -> dict[int, int]:
    ids = list(team_ids)
    if not ids:
        return {}
    rows = db.execute(
        select(TeamMember.team_id, func.count())
        .where(TeamMember.team_id.in_(ids))
        .group_by(TeamMember.team_id)
    ).all()
    return {tid: int(n) for tid, n in rows}


def resolve(*, db: Session, names: Sequence[str]) -> list[Team]:
    """The teams of these names, in order, duplicates dropped; TeamUnknown (422) naming the
    first name no team has."""
    wanted = list(dict.fromkeys(names))
    found = {t.name: t for t in db.scalars(select(Team).where(Team.name.in_(wanted)))}
    for name in wanted:
        if name not in found:
            raise TeamUnknown(f"team {name!r} does not exist")
    return [found[n] for n in wanted]


def set_memberships(*, db: Session, user_id: int, names: Sequence[str] | None) -> list[str]:
    """Make the user a member of exactly the teams `names` lists (None: the default team
    `general`); no commit. Returns the team names, sorted."""
    teams = (
        resolve(db=db, names=names)
        if names is not None
        else [db.get_one(Team, default_team_id(db=db))]
    )
    db.execute(delete(TeamMember).where(TeamMember.user_id == user_id))
    if teams:
        db.execute(insert(TeamMember), [{"team_id": t.id, "user_id": user_id} for t in teams])
    return sorted(t.name for t in teams)


def names_of(*, db: Session, user_ids: Iterable[int]) -> dict[int, list[str]]:
    """Each user's team names, sorted (an empty list for a user in no team)."""
    ids = list(user_ids)
    out: dict[int, list[str]] = {uid: [] for uid in ids}
    if not ids:
        return out
    rows = db.execute(
        select(TeamMember.user_id, Team.name)
        .join(Team, Team.id == TeamMember.team_id)
        .where(TeamMember.user_id.in_(ids))
        .order_by(Team.name)
    ).all()
    for uid, name in rows:
        out[uid].append(name)
    return out


def team_for_new_row(*, db: Session, user: User, team: str | None = None) -> int:
    """The team a case (dataset, job) created by `user` belongs to: the one `team` names, which
    the user must be in; else the user's only team. NoTeam (422) for a user in no team, or in
    several who named none; TeamUnknown (422) for a team the user is not in."""
    rows = db.execute(
        select(Team.id, Team.name)
        .join(TeamMember, TeamMember.team_id == Team.id)
        .where(TeamMember.user_id == user.id)
        .order_by(Team.name)
    ).all()
    mine = {name: tid for tid, name in rows}
    if team:
        if team not in mine:
            raise TeamUnknown(f"you are not a member of team {team!r}")
        return mine[team]
    if not mine:
        raise NoTeam(
            f"user {user.username!r} belongs to no team, so cannot create cases, datasets or "
            "jobs: an administrator must add them to a team"
        )
    if len(mine) > 1:
        raise NoTeam(
            f"you belong to several teams ({', '.join(mine)}): name the one this belongs to in "
            "'team'"
        )
    return next(iter(mine.values()))
