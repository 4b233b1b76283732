"""The shape of the code, checked: modules stay small enough to hold one concept."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "clearscan"
MAX_LINES = 600
REASON = "Why one module:"  # a long module says why in its docstring


def test_modules_stay_under_the_size_limit_or_say_why():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        text = path.read_text()
        if text.count("\n") <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if REASON not in doc:
            long.append(f"{path.relative_to(PACKAGE.parent)} ({text.count(chr(10))} lines)")
    assert not long, f"over {MAX_LINES} lines without '{REASON}' in the docstring: {long}"
