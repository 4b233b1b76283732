"""The base of every page context: a dataclass whose fields are its template's variables."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True, kw_only=True)
class Page:
    """A page's context. Subclasses name their template and declare one field per variable the
    template reads (besides `ws`, `csrf`, `path` and `request`, which `render_page` adds)."""

    template: ClassVar[str]

    def context(self) -> dict[str, Any]:
        """The fields by name, as they are (not copied into dicts, unlike `asdict`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
