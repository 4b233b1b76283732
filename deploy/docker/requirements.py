"""Print the requirements of clearscan with the given extras, one per line, read from
pyproject.toml: the image installs them in a layer of their own, so that a change to the source
does not re-install the dependencies.

    python requirements.py pyproject.toml postgres,s3,queue > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_SELF = re.compile(r"^clearscan\[(?P<extras>[^\]]+)\]\s*$")


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The dependencies plus those of each extra (an extra naming `clearscan[other]` pulls in
    `other`), then the build requirements, without duplicates, in order."""
    project = pyproject["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = [e.strip() for e in extras if e.strip()]
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; known: {', '.join(sorted(optional))}")
        seen.add(extra)
        for req in optional[extra]:
            m = _SELF.match(req)
            if m:
                todo.extend(e.strip() for e in m["extras"].split(","))
            else:
                out.append(req)
    out.extend(pyproject.get("build-system", {}).get("requires", []))
    return list(dict.fromkeys(out))


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(f"usage: {argv[0]} PYPROJECT EXTRAS")
    pyproject = tomllib.loads(Path(argv[1]).read_text())
    print("\n".join(requirements(pyproject, argv[2].split(","))))


if __name__ == "__main__":
    main(sys.argv)
