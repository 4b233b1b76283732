"""Package metadata that installers read: the licence is an SPDX expression (PEP 639), not the
deprecated TOML table that setuptools refuses from 2027 on."""

from __future__ import annotations

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
