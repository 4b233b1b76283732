"""What the registry refuses, each with the HTTP status it answers with (through the one
ClearScanError handler): an unknown model 404, a version that cannot load 503, a roll-out that
clashes with the current state 409, an impossible roll-out setting or a package that cannot be
imported 422 (an existing version 409)."""

from __future__ import annotations

from clearscan.errors import ClearScanError, Conflict, NotFound, Unavailable, Unprocessable

__all__ = [
    "ImportRejected",
    "InvalidModelRef",
    "ModelNotFound",
    "ModelUnavailable",
    "RegistryError",
    "RolloutConflict",
    "RolloutInvalid",
    "VersionExists",
]


class RegistryError(ClearScanError):
    """Base of the registry's errors (400 unless a subclass says otherwise)."""


class ModelNotFound(RegistryError, NotFound):
    """No model of that name, or no such version of it."""


class ModelUnavailable(RegistryError, Unavailable):
    """The version exists but cannot load (its reason is in the message)."""


class RolloutConflict(RegistryError, Conflict):
    """The change clashes with the current roll-out state (activating a version that cannot
    load, removing the active version, rolling back with nothing to roll back to)."""


class RolloutInvalid(RegistryError, Unprocessable):
    """A roll-out setting out of range (a canary share outside 0-100)."""


class InvalidModelRef(RegistryError, Unprocessable, ValueError):
    """A model name or version that does not follow the rules of :mod:`clearscan.registry.ref`."""


class ImportRejected(Unprocessable, ValueError):
    """The package cannot be imported; the message names the problem. Nothing was stored."""


class VersionExists(ImportRejected, Conflict):
    """The version is already in the store; versions are immutable."""

    status_code = 409
    title = Conflict.title
