"""Reading a batch's ZIP archive: what the central directory alone refuses (too many entries,
too large, a ZIP bomb, unsafe paths, links, encryption), entries that are not images, damaged
entries, and what is skipped or kept of the names."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from clearscan.batches.archive import (
    ArchiveLimits,
    ArchiveRefused,
    ArchiveTooLarge,
    display_name,
    read_archive,
)
from clearscan.imaging import UnsupportedFormat
from tests.conftest import chest_like, png_bytes

LIMITS = ArchiveLimits(max_items=5, max_entry_bytes=4 << 20, max_total_bytes=8 << 20)
PNG = png_bytes(chest_like(64, 1))


def make_zip(entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def read(data: bytes, limits: ArchiveLimits = LIMITS) -> list:
    return list(read_archive(io.BytesIO(data), limits))


def test_images_in_folders_in_archive_order_with_display_names():
    data = make_zip({"study/a.png": PNG, "b.png": PNG, "study/": b"", "deep/er/c.png": PNG})
    entries = read(data)
    assert [(e.position, e.name) for e in entries] == [(1, "a.png"), (2, "b.png"), (3, "c.png")]
    assert all(e.data == PNG for e in entries)


def test_resource_forks_and_hidden_files_are_skipped():
    data = make_zip({"__MACOSX/._a.png": b"\x00\x05", ".DS_Store": b"junk", "a.png": PNG})
    assert [e.name for e in read(data)] == ["a.png"]


@pytest.mark.parametrize(
    "data",
    [b"", b"PK\x03\x04 not really", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64],
    ids=["empty", "truncated", "png"],
)
def test_not_a_zip(data):
    with pytest.raises(ArchiveRefused, match="not a readable ZIP archive"):
        read(data)


def test_no_images():
    with pytest.raises(ArchiveRefused, match="holds no images"):
        read(make_zip({"folder/": b"", ".hidden": b"x"}))


@pytest.mark.parametrize(
    "name", ["../evil.png", "a/../../evil.png", "/etc/evil.png", "C:/evil.png", "a\\..\\evil.png"]
)
def test_unsafe_paths_are_refused(name):
    with pytest.raises(ArchiveRefused, match="entry 2 of the archive has an unsafe path"):
        read(make_zip({"ok.png": PNG, name: PNG}))


def test_symbolic_links_are_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveRefused, match="symbolic link"):
        read(buf.getvalue())


def test_encrypted_entries_are_refused():
    data = bytearray(make_zip({"a.png": PNG}))
    # set the "encrypted" flag in the local header and in the central directory
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(sig)
        data[at + offset] |= 0x1
    with pytest.raises(ArchiveRefused, match="encrypted"):
        read(bytes(data))


def test_too_many_images():
    data = make_zip({f"{i}.png": PNG for i in range(6)})
    with pytest.raises(ArchiveTooLarge, match="more than 5 images") as err:
        read(data)
    assert err.value.status_code == 413


def test_an_entry_over_the_upload_limit():
    big = ArchiveLimits(max_items=5, max_entry_bytes=len(PNG) - 1, max_total_bytes=1 << 30)
    with pytest.raises(ArchiveTooLarge, match=r"entry 1 of the archive is .* uncompressed"):
        read(make_zip({"a.png": PNG}), big)


def test_the_entries_together_over_the_total():
    small = ArchiveLimits(max_items=5, max_entry_bytes=1 << 20, max_total_bytes=2 * len(PNG))
    with pytest.raises(ArchiveTooLarge, match="unpacks to more than"):
        read(make_zip({"a.png": PNG, "b.png": PNG, "c.png": PNG}), small)


def test_a_zip_bomb_is_refused_before_anything_is_inflated(monkeypatch):
    bomb = make_zip({"a.png": PNG, "bomb.png": b"\x00" * (3 << 20)}, zipfile.ZIP_DEFLATED)
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: opened.append(a) or 1 / 0)
    with pytest.raises(ArchiveTooLarge, match=r"entry 2 of the archive expands .* ZIP bomb"):
        read(bomb)
    assert opened == []  # refused from the central directory alone


def test_small_entries_may_compress_well():
    blank = png_bytes(chest_like(64, 1) * 0)  # tiny and very compressible: no bomb
    assert len(read(make_zip({"a.png": blank}, zipfile.ZIP_DEFLATED))) == 1


def test_an_entry_that_is_not_an_image_is_named_by_position():
    data = make_zip({"a.png": PNG, "notes.pdf": b"%PDF-1.4 a letter"})
    with pytest.raises(UnsupportedFormat) as err:
        read(data)
    assert err.value.status_code == 415
    assert "entry 2 of the archive" in err.value.detail and "PDF" in err.value.detail
    assert "notes" not in err.value.detail  # names may hold identifiers: never in messages


def test_a_nested_archive_is_not_an_image():
    with pytest.raises(UnsupportedFormat, match="ZIP archive"):
        read(make_zip({"inner.zip": make_zip({"a.png": PNG})}))


def test_a_damaged_entry_is_refused():
    data = bytearray(make_zip({"a.png": PNG}))
    at = data.find(b"IDAT")  # inside the stored PNG: the CRC no longer matches
    data[at + 10] ^= 0xFF
    with pytest.raises(ArchiveRefused, match="entry 1 of the archive cannot be read"):
        read(bytes(data))


def test_display_names_are_data_not_paths():
    assert display_name("a/b/scan 1.png") == "scan 1.png"
    assert display_name("x\\y\\z.dcm") == "z.dcm"
    assert display_name("bad\x00\x1b[31mname.png") == "bad[31mname.png"
    assert display_name("dir/") == "dir"
    assert display_name("") == "image"
    assert len(display_name("n" * 400 + ".png")) == 255
