"""Documentation keeps up with the code: every setting and every CLI command is documented."""

from __future__ import annotations

from pathlib import Path

import typer.main

from clearscan.cli.main import app
from clearscan.config import Settings

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_setting_is_documented():
    text = (DOCS / "configuration.md").read_text()
    missing = [f for f in Settings.model_fields if f"CLEARSCAN_{f.upper()}" not in text]
    assert not missing, f"undocumented settings: {missing}"


def _commands(group: typer.Typer, prefix: str = "clearscan") -> list[str]:
    click_group = typer.main.get_command(group)
    out: list[str] = []

    def walk(cmd, name):  # type: ignore[no-untyped-def]
        subs = getattr(cmd, "commands", None)
        if subs:
            for sub_name, sub in subs.items():
                walk(sub, f"{name} {sub_name}")
        else:
            out.append(name)

    walk(click_group, prefix)
    return out


def test_every_cli_command_is_documented():
    text = (DOCS / "cli.md").read_text()
    commands = _commands(app)
    assert "clearscan serve" in commands and "clearscan users create" in commands
    missing = [c for c in commands if f"`{c}" not in text]
    assert not missing, f"undocumented commands: {missing}"


def test_readme_quick_start():
    readme = (DOCS.parent / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
