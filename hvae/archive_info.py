"""What an ``.hvz`` archive holds, read without a model (``hvae info``).

Free of torch, numpy, diffusers and PIL (so is everything it imports): listing
an archive takes milliseconds, not the seconds that importing torch takes.
"""

from __future__ import annotations

from pathlib import Path

from hvae.codec import ArchiveReader, DamagedRecord
from hvae.safe_io import printable


def bits_per_pixel(size_bytes: int, pixels: int) -> float | None:
    """8 * bytes / pixels; None (shown as n/a) without pixels, where a rate means nothing."""
    return 8 * size_bytes / pixels if pixels else None


def format_bpp(bpp: float | None) -> str:
    return "n/a" if bpp is None else f"{bpp:.4f}"


def archive_info(archive: str | Path) -> dict:
    """Per-image bytes and bpp, totals and the model fingerprint. Names and messages are
    ``printable``: a name cannot move the terminal's cursor or change its colors.
    Raises ``ArchiveError`` for a file that is not a readable archive."""
    reader = ArchiveReader(archive)
    images, damaged = [], []
    for i, record in reader.records():
        if isinstance(record, DamagedRecord):
            damaged.append(printable(str(record)))
            continue
        size = reader.entries[i][1]
        images.append(
            {
                "name": printable(record.name),
                "width": record.width,
                "height": record.height,
                "quality": record.quality,
                "bytes": size,
                "bpp": bits_per_pixel(size, record.width * record.height),
            }
        )
    total_bytes = len(reader.data)
    total_pixels = sum(i["width"] * i["height"] for i in images)
    return {
        "archive": str(archive),
        "fingerprint": reader.fingerprint,
        "format_version": reader.version,
        "complete": reader.complete,
        "images": images,
        "damaged": damaged,
        "total_bytes": total_bytes,
        "total_pixels": total_pixels,
        "bpp": bits_per_pixel(total_bytes, total_pixels),
    }
