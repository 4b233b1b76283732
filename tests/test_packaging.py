"""Package metadata that installers read: the licence is an SPDX expression (PEP 639), not the
deprecated TOML table that setuptools refuses from 2027 on."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from packaging.licenses import canonicalize_license_expression
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def test_license_is_an_spdx_expression():
    project = _pyproject()["project"]
    license_ = project["license"]
    assert isinstance(license_, str), "project.license must be an SPDX string, not a table"
    assert canonicalize_license_expression(license_) == license_


def test_build_backend_understands_spdx_licences():
    # setuptools reads a string licence as SPDX only from version 77 on
    (req,) = [Requirement(r) for r in _pyproject()["build-system"]["requires"]]
    assert req.name == "setuptools"
    assert not req.specifier.contains(Version("76.9")), "setuptools < 77 would be allowed"


# --- every import is a declared dependency ----------------------------------------------------

# Modules loaded only where their extra is installed (the base install never imports them:
# tests/test_base_install.py runs the server without PyTorch).
EXTRA_MODULES = {
    "torch": {
        "clearscan/training/architectures.py",
        "clearscan/training/export.py",
        "clearscan/training/resnet.py",
        "clearscan/training/trainers/image.py",
    },
}


def _imports(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(top-level packages imported when the module loads, those imported lazily: inside
    functions, `try` blocks or `if TYPE_CHECKING`)."""
    eager: set[str] = set()
    lazy: set[str] = set()

    def visit(nodes: list[ast.stmt], guarded: bool) -> None:
        for n in nodes:
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                names = [n.module] if n.module and not n.level else []
            elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(n.body, True)
                continue
            elif isinstance(n, ast.If):
                visit(n.body, guarded or "TYPE_CHECKING" in ast.unparse(n.test))
                visit(n.orelse, guarded)
                continue
            elif isinstance(n, ast.Try):
                visit(n.body, True)
                for h in n.handlers:
                    visit(h.body, True)
                visit(n.orelse, guarded)
                visit(n.finalbody, guarded)
                continue
            elif isinstance(n, ast.ClassDef | ast.With | ast.For | ast.While):
                visit(n.body, guarded)
                continue
            else:
                continue
            (lazy if guarded else eager).update(m.split(".")[0] for m in names)

    visit(tree.body, False)
    return eager, lazy


def test_every_third_party_import_is_a_declared_dependency():
    """A module the code imports must be a dependency the package declares (an undeclared one
    works here, where something else installed it, and fails in the container image): in the
    core dependencies when imported as a module loads, in an extra when imported lazily."""
    import sys
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    project = _pyproject()["project"]
    core = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    extras = {
        name: {canonicalize_name(Requirement(r).name) for r in reqs}
        for name, reqs in project["optional-dependencies"].items()
    }
    anywhere = core.union(*extras.values())
    dists = packages_distributions()
    root = PYPROJECT.parent
    problems = []
    for path in sorted((root / "clearscan").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        eager, lazy = _imports(ast.parse(path.read_text(encoding="utf-8")))
        allowed_eager = core.union(*(extras[x] for x, mods in EXTRA_MODULES.items() if rel in mods))
        for kind, names, allowed in (("eager", eager, allowed_eager), ("lazy", lazy, anywhere)):
            for name in sorted(names - {"clearscan", "__future__"}):
                if name in sys.stdlib_module_names:
                    continue
                found = {canonicalize_name(d) for d in dists.get(name, [])}
                if not found & allowed:
                    problems.append(f"{rel}: {kind} import of {name} ({sorted(found)})")
    assert problems == []
