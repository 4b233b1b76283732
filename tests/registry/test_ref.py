"""ModelRef: the one definition of a model's name:version (parse, validate, order, next)."""

from __future__ import annotations

import pytest

from clearscan.errors import Unprocessable
from clearscan.registry.errors import InvalidModelRef, RegistryError
from clearscan.registry.ref import (
    ModelRef,
    name_from,
    next_version,
    valid_name,
    valid_version,
    version_key,
)


def test_parse_and_str_round_trip():
    ref = ModelRef.parse("pneumonia-cxr:1.2.3-rc.1+cpu")
    assert (ref.name, ref.version) == ("pneumonia-cxr", "1.2.3-rc.1+cpu")
    assert str(ref) == "pneumonia-cxr:1.2.3-rc.1+cpu"
    assert ModelRef.parse(str(ref)) == ref and hash(ref) == hash(ModelRef.parse(str(ref)))
    with pytest.raises(AttributeError):
        ref.name = "other"  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    "text",
    [
        "pneumonia-cxr",  # no version
        ":1.0.0",  # no name
        "pneumonia-cxr:",  # empty version
        "Pneumonia:1.0.0",  # upper case
        "-lead:1.0.0",
        ".hidden:1.0.0",
        "a/b:1.0.0",  # a path
        "..:1.0.0",
        "a b:1.0.0",
        f"{'x' * 65}:1.0.0",  # too long
        "m:1.0",  # not a semantic version
        "m:01.0.0",  # leading zero
        "m:1.0.0.0",
        "m:v1.0.0",
        "m:1.0.0:2",
        "m:../../etc",
    ],
)
def test_bad_refs_are_refused(text):
    with pytest.raises(InvalidModelRef) as e:
        ModelRef.parse(text)
    # a registry error answering 422 through the one handler
    assert isinstance(e.value, RegistryError) and isinstance(e.value, Unprocessable)
    assert e.value.status_code == 422 and e.value.detail


def test_construction_validates_too():
    assert str(ModelRef("a" * 64, "0.0.1")) == f"{'a' * 64}:0.0.1"
    for name, version in (("ok", "bad"), ("Bad", "1.0.0"), ("", "1.0.0")):
        with pytest.raises(InvalidModelRef):
            ModelRef(name, version)
    assert valid_name("m.v2_x-y") and not valid_name("m:1")
    assert valid_version("10.20.30-alpha.1+build.5") and not valid_version("1.2")


def test_versions_order_by_semantic_version_precedence():
    # the order of https://semver.org section 11, plus numeric (not text) fields
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.9.0",
        "1.10.0",
        "2.0.0",
    ]
    shuffled = sorted(ordered, key=lambda v: v[::-1])
    assert sorted(shuffled, key=version_key) == ordered
    refs = [ModelRef("m", v) for v in shuffled]
    assert [r.version for r in sorted(refs)] == ordered
    assert ModelRef("a", "9.0.0") < ModelRef("b", "1.0.0")  # by name first
    assert max(refs) == ModelRef("m", "2.0.0")
    # build metadata does not change precedence
    assert version_key("1.0.0+cpu") == version_key("1.0.0")
    # text that is not a version sorts first instead of failing
    assert sorted(["2.0.0", "junk", "1.0.0"], key=version_key) == ["junk", "1.0.0", "2.0.0"]


def test_next_version():
    assert next_version([]) == "1.0.0"
    assert next_version(["1.0.0"]) == "1.1.0"
    assert next_version(["1.0.0", "1.9.0", "1.10.0", "0.5.0"]) == "1.11.0"
    assert next_version(["2.3.4-rc.1+cpu", "2.3.3"]) == "2.4.0"
    assert next_version([".incoming-x", "not-a-version"]) == "1.0.0"
    assert ModelRef.next("m", ["1.0.0", "1.1.0"]) == ModelRef("m", "1.2.0")
    with pytest.raises(InvalidModelRef):
        ModelRef.next("Not Valid", [])


def test_name_from_free_text():
    assert name_from("Chest X-Ray (v2)") == "chest-x-ray--v2-"
    assert valid_name(name_from("Breast_Cancer.Wisconsin"))


def test_ref_of_a_manifest():
    from clearscan.inference.manifest import load_manifest
    from clearscan.registry.catalog import BUNDLED_DIR

    m = load_manifest(BUNDLED_DIR / "pneumonia-cxr")
    assert ModelRef.of(m) == ModelRef(m.name, m.version) and str(ModelRef.of(m)) == m.ref
