"""The synthetic angiogram generator: determinism, a mask that is exactly the rendered tree,
dark vessels, a catheter outside the mask, and stenoses that really narrow the mask."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from clearscan.cli.main import app
from clearscan.datasets.synth_angio import (
    CSV_COLUMNS,
    GENERATOR_VERSION,
    SyntheticAngiogram,
    generate,
    image_seed,
)
from clearscan.errors import Invalid

SEEDS = range(12)
EIGHT = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def samples() -> list[SyntheticAngiogram]:
    return [generate(s) for s in SEEDS]


def _tangent(points: np.ndarray, i: int) -> np.ndarray:
    v = points[min(i + 2, len(points) - 1)] - points[max(i - 2, 0)]
    return v / np.hypot(*v)


def _strip_width(mask: np.ndarray, p: np.ndarray, tangent: np.ndarray, half_w: float) -> float:
    """Mask pixels in a 5 px long strip across the vessel at p, per px of length: the width."""
    half_len = 2.5
    normal = np.array([-tangent[1], tangent[0]])
    reach = int(half_len + half_w) + 3
    x0, y0 = int(p[0]) - reach, int(p[1]) - reach
    ys, xs = np.mgrid[max(y0, 0) : y0 + 2 * reach, max(x0, 0) : x0 + 2 * reach]
    inside = (ys < mask.shape[0]) & (xs < mask.shape[1])
    ys, xs = ys[inside], xs[inside]
    dx, dy = xs - p[0], ys - p[1]
    along = dx * tangent[0] + dy * tangent[1]
    across = dx * normal[0] + dy * normal[1]
    sel = (np.abs(along) <= half_len) & (np.abs(across) <= half_w)
    return float(mask[ys[sel], xs[sel]].sum()) / (2 * half_len)


def _tube_mask(points: np.ndarray, radii: np.ndarray, size: int) -> np.ndarray:
    """Pixels whose centre is within the linearly interpolated radius of a segment: written
    segment by segment, independently of the generator's vectorised renderer."""
    out = np.zeros((size, size), bool)
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
        r = max(ra, rb)
        x0, y0 = (np.floor(np.minimum(a, b) - r) - 1).astype(int)
        x1, y1 = (np.ceil(np.maximum(a, b) + r) + 1).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size - 1), min(y1, size - 1)
        if x1 < x0 or y1 < y0:
            continue
        ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
        seg = b - a
        t = np.clip(((xs - a[0]) * seg[0] + (ys - a[1]) * seg[1]) / max(seg @ seg, 1e-12), 0, 1)
        d2 = (xs - a[0] - t * seg[0]) ** 2 + (ys - a[1] - t * seg[1]) ** 2
        out[y0 : y1 + 1, x0 : x1 + 1] |= d2 < (ra + t * (rb - ra)) ** 2
    return out


def test_same_seed_same_bytes_and_different_seeds_differ():
    a, b, c = generate(5), generate(5), generate(6)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.stenoses == b.stenoses
    assert a.image.tobytes() != c.image.tobytes() and a.mask.tobytes() != c.mask.tobytes()


def test_shapes_types_and_ranges(samples):
    for s in samples:
        assert s.image.shape == s.mask.shape == (512, 512)
        assert s.image.dtype == np.uint8 and s.mask.dtype == bool
        assert s.image.std() > 10  # not a flat picture
        main = s.branches[0]
        assert main.parent is None and 4.5 <= main.reference_radii[0] <= 7.5
        for br in s.branches[1:]:
            assert br.parent is not None and br.parent < br.id
            parent = s.branches[br.parent]
            assert br.reference_radii[0] < parent.reference_radii[br.parent_index]
            assert np.allclose(br.points[0], parent.points[br.parent_index])
        reference = np.concatenate([br.reference_radii for br in s.branches])
        assert reference.min() >= 1.0 - 1e-9 and reference.max() <= 7.5
        radii = np.concatenate([br.radii for br in s.branches])
        assert radii.min() >= 0.2 * 3.0 - 1e-9  # an 80 % stenosis of a 3 px radius
        assert min(br.reference_radii[-1] for br in s.branches) < 1.6  # small vessels exist
    small = generate(1, size=256)
    assert small.image.shape == (256, 256)


def test_invalid_arguments_are_refused():
    with pytest.raises(Invalid):
        generate(1, size=64)
    with pytest.raises(Invalid):
        generate(1, n_stenoses=4)


def test_mask_is_a_plausible_connected_tree(samples):
    for s in samples:
        assert 0.02 <= s.mask.mean() <= 0.25
        labels, n = ndimage.label(s.mask, structure=EIGHT)
        sizes = np.bincount(labels.ravel())[1:]
        assert sizes.max() >= 0.99 * s.mask.sum(), (s.seed, n)


@pytest.mark.parametrize("index", [0, 7])
def test_mask_is_exactly_the_union_of_the_tubes(samples, index):
    s = samples[index]
    union = np.zeros_like(s.mask)
    for br in s.branches:
        union |= _tube_mask(br.points, br.radii, s.size)
    differ = int((union != s.mask).sum())
    assert differ <= 0.001 * s.mask.sum(), differ


def test_vessels_are_darker_than_their_surroundings(samples):
    for s in samples:
        image = s.image.astype(float)
        near = ndimage.binary_dilation(s.mask, EIGHT, iterations=5)
        ring = near & ~ndimage.binary_dilation(s.mask, EIGHT, iterations=2)
        ring &= ~ndimage.binary_dilation(s.catheter_mask, EIGHT, iterations=3)
        assert image[s.mask].mean() < image[ring].mean() - 5, s.seed


def test_darkness_grows_with_the_path_length():
    # the chord through a thick vessel is longer, so it is darker than a thin one
    s = generate(3, noise=False)
    bg = ndimage.median_filter(s.image, size=25).astype(float)
    contrast = bg - s.image.astype(float)
    others = s.catheter_mask
    thick, thin = [], []
    for br in s.branches:
        for (x, y), r in zip(br.points[::3], br.radii[::3], strict=True):
            xi, yi = round(x), round(y)
            if not (0 <= xi < s.size and 0 <= yi < s.size) or others[yi, xi]:
                continue
            (thick if r >= 4 else thin if r <= 1.6 else []).append(contrast[yi, xi])
    assert len(thick) > 20 and len(thin) > 20
    assert np.median(thick) > 2 * np.median(thin) > 0


def test_catheter_is_dark_but_not_in_the_mask(samples):
    for s in samples:
        assert s.catheter is not None
        cath = s.catheter_mask
        assert cath.sum() > 300 * s.catheter.radius  # long
        assert (cath & s.mask).sum() < 0.35 * cath.sum()
        last = s.catheter.points[-1]
        assert last.min() < 0 or last.max() > s.size - 1  # runs off a border
        free = cath & ~ndimage.binary_dilation(s.mask, EIGHT, iterations=3)
        ring = ndimage.binary_dilation(cath, EIGHT, iterations=5)
        ring &= ~ndimage.binary_dilation(cath | s.mask, EIGHT, iterations=2)
        image = s.image.astype(float)
        assert image[free].mean() < image[ring].mean() - 5, s.seed
    assert not generate(2, catheter=False).catheter_mask.any()


def test_stenosis_records_are_consistent(samples):
    counts = [len(s.stenoses) for s in samples]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1
    for s in samples:
        for st in s.stenoses:
            br = s.branches[st.branch]
            assert 20 <= st.percent_stenosis <= 80
            assert st.rvd_px >= 6.0 and 3 <= st.lesion_length_px / st.rvd_px <= 8
            assert st.percent_stenosis == pytest.approx(100 * (1 - st.mld_px / st.rvd_px))
            assert (st.x, st.y) == pytest.approx(tuple(br.points[st.index]))
            assert st.mld_px == pytest.approx(2 * br.radii[st.index])
            assert st.rvd_px == pytest.approx(2 * br.reference_radii[st.index])
            assert 0 <= st.x < s.size and 0 <= st.y < s.size


def test_each_stenosis_is_narrower_in_the_mask(samples):
    # widths measured on the mask alone, across the branch (the tree gives only where and
    # which way): at the narrowest point and one diameter beyond either end of the lesion
    errors = []
    for s in samples:
        for st in s.stenoses:
            br = s.branches[st.branch]
            pts, i = br.points, st.index
            half_w = st.rvd_px / 2 + 2
            off = round(st.lesion_length_px / 2 + 0.75 * st.rvd_px)
            at = _strip_width(s.mask, pts[i], _tangent(pts, i), half_w)
            refs = [
                _strip_width(s.mask, pts[k], _tangent(pts, k), half_w) for k in (i - off, i + off)
            ]
            ref = float(np.mean(refs))
            # pixel-exact to within the grid: each width within 0.75 px of the true diameter
            # averaged over the same 5 px strip
            assert abs(at - np.mean(2 * br.radii[i - 2 : i + 3])) < 0.75, (s.seed, st)
            assert abs(ref - st.rvd_px) < 1.0, (s.seed, st, ref)
            measured = 100 * (1 - at / ref)
            errors.append(measured - st.percent_stenosis)
            assert abs(measured - st.percent_stenosis) < 10, (s.seed, st, measured)
    assert len(errors) >= 12 and np.mean(np.abs(errors)) < 3


def test_no_stenosis_near_a_branch_point(samples):
    for s in samples:
        for st in s.stenoses:
            here = np.array([st.x, st.y])
            br = s.branches[st.branch]
            points = [br.points[0]]  # where the branch leaves its parent
            points += [br.points[c.parent_index] for c in s.branches if c.parent == br.id]
            for p in points:
                gap = np.hypot(*(p - here))
                assert gap >= st.lesion_length_px / 2 + 1.5 * st.rvd_px, (s.seed, st, gap)


def test_cli_writes_the_folder_and_refuses_a_non_empty_one(tmp_path):
    out = tmp_path / "angio"
    runner = CliRunner()
    r = runner.invoke(
        app, ["datasets", "synth-angio", "--n", "3", "--seed", "4", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    names = ["0000.png", "0001.png", "0002.png"]
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert sorted(p.name for p in (out / "masks").iterdir()) == names
    with (out / "stenoses.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    expected = []
    for i, name in enumerate(names):
        sample = generate(image_seed(4, i))
        image = np.asarray(Image.open(out / "images" / name))
        mask = np.asarray(Image.open(out / "masks" / name))
        assert image.dtype == np.uint8 and mask.dtype == np.uint8 and mask.shape == (512, 512)
        assert np.array_equal(image, sample.image)
        assert set(np.unique(mask)) <= {0, 1} and np.array_equal(mask == 1, sample.mask)
        expected += [(name, st) for st in sample.stenoses]
    assert len(rows) == len(expected) >= 3
    for row, (name, st) in zip(rows, expected, strict=True):
        assert row["image"] == name and int(row["branch"]) == st.branch
        for key in ("x", "y", "percent_stenosis", "mld_px", "rvd_px", "lesion_length_px"):
            assert float(row[key]) == pytest.approx(getattr(st, key), abs=0.01)
    readme = (out / "README.md").read_text()
    assert "synthetic" in readme.lower() and "not clinical" in readme.lower()
    assert GENERATOR_VERSION in readme and "100003" in readme and "--seed 4" in readme

    again = runner.invoke(
        app, ["datasets", "synth-angio", "--n", "1", "--seed", "4", "--out", str(out)]
    )
    assert again.exit_code == 1
    assert "not an empty folder" in " ".join(again.output.split())
    assert sorted(p.name for p in (out / "images").iterdir()) == names  # untouched


def test_cli_imports_a_segmentation_dataset_with_its_true_stenoses(tmp_path, monkeypatch):
    import json as _json

    from sqlalchemy import create_engine, select

    from clearscan.bootstrap import blob_store
    from clearscan.config import Settings
    from clearscan.datasets.models import Dataset

    monkeypatch.setenv("CLEARSCAN_ADMIN_PASSWORD", "admin-password-123")
    data = tmp_path / "data"
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "datasets",
            "synth-angio",
            "--n",
            "3",
            "--seed",
            "2",
            "--size",
            "128",
            "--name",
            "synth-demo",
            "--json",
            "--data-dir",
            str(data),
        ],
    )
    assert r.exit_code == 0, r.output
    ds = _json.loads(r.output)
    assert ds["kind"] == "segmentation" and ds["classes"] == ["background", "vessel"]
    assert ds["n_items"] == 3
    settings = Settings(data_dir=data)
    engine = create_engine(settings.sqlalchemy_url)
    with engine.connect() as conn:
        info = conn.execute(select(Dataset.info).where(Dataset.name == "synth-demo")).scalar_one()
    engine.dispose()
    assert info["stenoses"] >= 1
    table = blob_store(settings).get(info["stenoses_blob"]).decode()
    assert table.splitlines()[0].startswith("image,branch,x,y,percent_stenosis")
    assert len(table.splitlines()) == info["stenoses"] + 1
    assert not list(data.glob(".synth-*"))  # the generated folder is gone
    r = runner.invoke(app, ["datasets", "synth-angio", "--n", "1", "--seed", "1"])
    assert r.exit_code == 1 and "--out DIR, --name NAME" in r.output
