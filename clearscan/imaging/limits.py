"""Size caps on untrusted images, checked before any pixel buffer is allocated."""

from __future__ import annotations

from dataclasses import dataclass

from clearscan.imaging.errors import CorruptImage, ImageTooLarge

__all__ = ["Limits", "check_size"]


@dataclass(frozen=True)
class Limits:
    """Caps checked before any pixels are decoded."""

    max_pixels: int = 64_000_000  # rows*cols(*samples) of the decoded image or slice
    max_dimension: int = 30_000  # any single side
    # voxels of a NIfTI volume (its first 3D volume): only one slice is kept in memory, but a
    # .nii.gz is decompressed up to that slice (or through, for sagittal/coronal storage)
    max_volume_voxels: int = 512_000_000


def check_size(kind: str, width: int, height: int, count: int, limits: Limits) -> None:
    """Raise before allocating anything when an image is degenerate or over the caps.

    ``count`` multiplies ``width * height`` (frames, slices, samples).
    """
    if width < 1 or height < 1 or count < 1:
        raise CorruptImage(f"{kind} has invalid dimensions {width} x {height}")
    if max(width, height) > limits.max_dimension:
        raise ImageTooLarge(
            f"{kind} is {width} x {height} pixels; the largest side allowed is "
            f"{limits.max_dimension:,} pixels"
        )
    total = width * height * count
    if total > limits.max_pixels:
        extra = f" x {count:,}" if count > 1 else ""
        raise ImageTooLarge(
            f"{kind} is {width} x {height}{extra} = {total:,} pixels, over the limit of "
            f"{limits.max_pixels:,}"
        )
