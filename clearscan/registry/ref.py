"""`name:version`, the one definition of what a model name and a model version may be.

A name is lower-case letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at
most 64 characters (it names a folder of the model store and a row of the roll-out state). A
version is a semantic version (https://semver.org): ``MAJOR.MINOR.PATCH``, optionally with a
pre-release (``-rc.1``) and build metadata (``+cpu``). Versions order by semantic-version
precedence: numerically per field, a pre-release before its release, build metadata ignored.

The patterns are defined beside the manifest (:mod:`clearscan.inference.manifest`), whose
JSON-schema patterns they are (``docs/manifest.schema.json``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import total_ordering

from clearscan.inference.manifest import NAME_PATTERN, VERSION_PATTERN, ModelManifest
from clearscan.registry.errors import InvalidModelRef

__all__ = [
    "ModelRef",
    "name_from",
    "next_version",
    "valid_name",
    "valid_version",
    "version_key",
]

FIRST_VERSION = "1.0.0"
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
_NOT_NAME = re.compile(r"[^a-z0-9._-]")

VersionKey = tuple[object, ...]


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def valid_version(version: str) -> bool:
    return _VERSION.fullmatch(version) is not None


def name_from(text: str) -> str:
    """A model name made from free text (a file or dataset name): lower-cased, every character
    a name may not hold replaced by ``-``. It may still be invalid (empty, too long, starting
    with ``.``); the manifest's validation names that."""
    return _NOT_NAME.sub("-", text.lower())


def version_key(version: str) -> VersionKey:
    """Sort key of a version by semantic-version precedence. Any text is accepted: one that is
    not a semantic version sorts before every version (key ``(-1,)``)."""
    m = _VERSION.fullmatch(version)
    if m is None:
        return (-1,)
    core = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    pre = version.split("+", 1)[0].partition("-")[2]
    if not pre:
        return (*core, 1, ())
    # identifiers: numeric ones compare numerically and before alphanumeric ones
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (*core, 0, ids)


def next_version(existing: Iterable[str]) -> str:
    """The version after the highest semantic version in `existing` (the next minor: 1.2.3 ->
    1.3.0); 1.0.0 when there is none. Texts that are not versions are ignored."""
    valid = [v for v in existing if valid_version(v)]
    if not valid:
        return FIRST_VERSION
    major, minor, _patch = max(valid, key=version_key).split("-")[0].split("+")[0].split(".")
    return f"{major}.{int(minor) + 1}.0"


@total_ordering
@dataclass(frozen=True, eq=True)
class ModelRef:
    """One version of one model, valid by construction (InvalidModelRef, 422, otherwise).
    ``str(ref)`` is ``name:version``; refs order by name, then by version precedence."""

    name: str
    version: str

    def __post_init__(self) -> None:
        if not valid_name(self.name):
            raise InvalidModelRef(
                f"invalid model name {self.name!r}: lower-case letters, digits, '.', '_' and '-' "
                "(at most 64, starting with a letter or digit)"
            )
        if not valid_version(self.version):
            raise InvalidModelRef(
                f"invalid model version {self.version!r}: a semantic version such as 1.0.0"
            )

    @classmethod
    def of(cls, manifest: ModelManifest) -> ModelRef:
        """The version a model package's manifest declares."""
        return cls(manifest.name, manifest.version)

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """``name:version`` -> ModelRef; InvalidModelRef when either part is missing or bad."""
        name, sep, version = text.partition(":")
        if not sep:
            raise InvalidModelRef(f"invalid model reference {text!r}: NAME:VERSION expected")
        return cls(name, version)

    @classmethod
    def next(cls, name: str, existing: Iterable[str]) -> ModelRef:
        """The ref a new version of `name` gets after the versions in `existing`."""
        return cls(name, next_version(existing))

    @property
    def key(self) -> tuple[str, VersionKey, str]:
        # the version text last: versions equal in precedence (build metadata) still order
        return (self.name, version_key(self.version), self.version)

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ModelRef):
            return NotImplemented
        return self.key < other.key
