"""The Action enum and the code agree: every action the code emits is a member, and every member
is emitted somewhere. Read from the source (ast), so a branch no test runs still counts."""

from __future__ import annotations

import ast
from pathlib import Path

import clearscan
from clearscan.audit.actions import Action

PACKAGE = Path(clearscan.__file__).parent
ENUM_FILE = PACKAGE / "audit" / "actions.py"


def _is_action_enum(node: ast.expr) -> bool:
    """`Action` or `<module>.Action`."""
    return (isinstance(node, ast.Name) and node.id == "Action") or (
        isinstance(node, ast.Attribute) and node.attr == "Action"
    )


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def scan(root: Path = PACKAGE) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(members referenced as `Action.X`, string literals passed as an audit action), each with
    the places (`path:line`) they occur."""
    members: dict[str, list[str]] = {}
    literals: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        if path == ENUM_FILE:
            continue
        where = str(path.relative_to(root.parent))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Attribute) and _is_action_enum(node.value):
                members.setdefault(node.attr, []).append(f"{where}:{node.lineno}")
            elif isinstance(node, ast.Call):
                args = [kw.value for kw in node.keywords if kw.arg == "action"]
                if _call_name(node) == "Entry" and node.args:
                    args.append(node.args[0])
                for arg in args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        literals.setdefault(arg.value, []).append(f"{where}:{arg.lineno}")
    return members, literals


def test_every_emitted_action_is_a_member():
    members, literals = scan()
    known_values = {a.value for a in Action}
    unknown_literals = {v: at for v, at in literals.items() if v not in known_values}
    assert not unknown_literals, f"audit actions missing from Action: {unknown_literals}"
    unknown_members = {n: at for n, at in members.items() if n not in Action.__members__}
    assert not unknown_members, f"Action has no such member: {unknown_members}"


def test_every_member_is_emitted_somewhere():
    members, literals = scan()
    used = set(members) | {Action(v).name for v in literals if v in {a.value for a in Action}}
    unused = sorted(a.name for a in Action if a.name not in used)
    assert not unused, f"Action members nothing emits (remove them or emit them): {unused}"


def test_values_are_unique_dotted_names():
    values = [a.value for a in Action]
    assert len(values) == len(set(values))
    assert all(v == v.lower() and " " not in v and len(v) <= 64 for v in values)


def test_the_scan_finds_both_kinds_of_mistake(tmp_path):
    """The checks above can fail: a literal the enum lacks and a member nothing emits."""
    pkg = tmp_path / "clearscan"
    (pkg / "audit").mkdir(parents=True)
    (pkg / "thing.py").write_text(
        "audit.Entry('thing.frobnicate')\n"
        "jobs.submit_audited(db, ctx, action='training.submit')\n"
        "audit.Entry(Action.CASE_VIEW)\n"
        "audit.Entry(actions.Action.NO_SUCH_MEMBER)\n"
    )
    members, literals = scan(pkg)
    assert set(literals) == {"thing.frobnicate", "training.submit"}
    assert set(members) == {"CASE_VIEW", "NO_SUCH_MEMBER"}
    assert "thing.frobnicate" not in {a.value for a in Action}
    assert "NO_SUCH_MEMBER" not in Action.__members__
