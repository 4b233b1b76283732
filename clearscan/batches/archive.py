"""Reading a batch's ZIP archive of images without trusting it.

Every check that the central directory allows is made before anything is decompressed: the
number of entries, each entry's and the total uncompressed size, each entry's compression ratio,
unsafe paths (absolute, ``..``, backslashes), links and encrypted entries. Entries are then
inflated one at a time and never beyond their declared size (``zipfile`` stops there and checks
the CRC), and each must be a PNG, JPEG, DICOM or NIfTI image judged from its bytes. Entry names
are never used as paths: only the last part, cleaned, is kept as the item's display name.

Errors name an entry by its position in the archive (1-based), never by its name, which may
hold patient identifiers."""

from __future__ import annotations

import lzma
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

from clearscan.errors import TooLarge, Unprocessable
from clearscan.imaging import ImagingError, sniff

__all__ = [
    "MAX_ITEMS",
    "MAX_RATIO",
    "ArchiveEntry",
    "ArchiveLimits",
    "ArchiveRefused",
    "ArchiveTooLarge",
    "display_name",
    "read_archive",
]

MAX_ITEMS = 1000
"""Images one batch may hold (archive or stored images)."""
MAX_RATIO = 100
"""Largest uncompressed / compressed size of an entry over RATIO_FLOOR bytes."""
RATIO_FLOOR = 1 << 20
TOTAL_FACTOR = 10
"""The entries together may hold this many times the upload limit, uncompressed."""
_FLAG_ENCRYPTED = 0x1


class ArchiveRefused(Unprocessable):
    """The archive cannot be used as a batch (422); the message names the problem."""


class ArchiveTooLarge(TooLarge):
    """The archive holds too many entries or too many bytes, or looks like a ZIP bomb (413)."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_items: int
    max_entry_bytes: int
    max_total_bytes: int
    max_ratio: int = MAX_RATIO

    @classmethod
    def from_upload_limit(cls, max_upload_bytes: int, max_items: int = MAX_ITEMS) -> ArchiveLimits:
        """Each image at most the upload limit of one request; all of them together at most
        TOTAL_FACTOR times that."""
        return cls(
            max_items=max_items,
            max_entry_bytes=max_upload_bytes,
            max_total_bytes=TOTAL_FACTOR * max_upload_bytes,
        )


@dataclass(frozen=True)
class ArchiveEntry:
    position: int  # 1-based, in the archive's order of images
    name: str  # display name (data only)
    data: bytes


def display_name(filename: str) -> str:
    """The last part of an entry's path, without control characters, at most 255 characters:
    shown beside the item's result, never used as a path."""
    last = filename.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    clean = "".join(c for c in last if unicodedata.category(c)[0] != "C").strip()
    return clean[:255] or "image"


def _skipped(parts: tuple[str, ...]) -> bool:
    """macOS resource forks and hidden files (``.DS_Store``) that archivers add."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _members(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[tuple[int, zipfile.ZipInfo]]:
    """The image entries to read with their entry numbers, after every check the central
    directory allows."""
    infos = zf.infolist()
    if len(infos) > 4 * limits.max_items + 64:  # the directory alone is over any use
        raise ArchiveTooLarge(
            f"the archive has {len(infos):,} entries; a batch holds at most "
            f"{limits.max_items:,} images"
        )
    out: list[tuple[int, zipfile.ZipInfo]] = []
    total = 0
    for n, info in enumerate(infos, 1):
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if (
            name.startswith(("/", "\\"))
            or "\\" in name
            or ".." in parts
            or (len(name) > 1 and name[1] == ":")
            or "\x00" in name
        ):
            raise ArchiveRefused(f"entry {n} of the archive has an unsafe path (absolute or '..')")
        if info.is_dir() or _skipped(parts):
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ArchiveRefused(f"entry {n} of the archive is a symbolic link")
        if info.flag_bits & _FLAG_ENCRYPTED:
            raise ArchiveRefused(f"entry {n} of the archive is encrypted")
        if info.file_size > limits.max_entry_bytes:
            raise ArchiveTooLarge(
                f"entry {n} of the archive is {info.file_size / 2**20:.1f} MB uncompressed; "
                f"each image may be at most {limits.max_entry_bytes / 2**20:g} MB"
            )
        if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise ArchiveTooLarge(
                f"entry {n} of the archive expands {info.file_size // max(info.compress_size, 1)}"
                f" times; at most {limits.max_ratio} is accepted (a ZIP bomb?)"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveTooLarge(
                f"the archive unpacks to more than {limits.max_total_bytes / 2**20:g} MB"
            )
        out.append((n, info))
        if len(out) > limits.max_items:
            raise ArchiveTooLarge(
                f"the archive holds more than {limits.max_items:,} images; "
                "split it into several batches"
            )
    if not out:
        raise ArchiveRefused("the archive holds no images")
    return out


def read_archive(source: IO[bytes], limits: ArchiveLimits) -> Iterator[ArchiveEntry]:
    """The images of the ZIP archive `source` (a seekable binary file), in archive order.

    Raises ArchiveRefused (422), ArchiveTooLarge (413) or, for an entry that is not an image,
    the imaging error that says so (415 / 422) with the entry named. The checks of the whole
    directory happen before the first entry is yielded."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise ArchiveRefused("the upload is not a readable ZIP archive") from None
    with zf:
        members = _members(zf, limits)
        for position, (n, info) in enumerate(members, 1):
            data = _read(zf, info, n, limits)
            try:
                sniff(data)
            except ImagingError as exc:
                exc.detail = f"entry {n} of the archive is not an image we can read: {exc.detail}"
                raise
            yield ArchiveEntry(position, display_name(info.filename), data)


_DAMAGED = (
    zipfile.BadZipFile,  # a bad CRC
    zlib.error,
    lzma.LZMAError,
    OSError,  # bz2, truncated members
    EOFError,
    NotImplementedError,  # an unsupported compression method
    RuntimeError,
    ValueError,
)


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, n: int, limits: ArchiveLimits) -> bytes:
    try:
        with zf.open(info) as f:
            data = f.read(min(info.file_size, limits.max_entry_bytes) + 1)
    except _DAMAGED:
        raise ArchiveRefused(f"entry {n} of the archive cannot be read (damaged?)") from None
    if len(data) != info.file_size:
        raise ArchiveRefused(f"entry {n} of the archive is not the size it declares")
    return data
