"""Checks and writers for what comes from outside: names and image sizes read from archives,
output files that must not clobber or follow what is already there, and polite kills.

Free of torch, numpy and PIL, so that ``hvae info`` and the archive parser stay fast to import.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from hvae.errors import HVAEError

# Refuse images of more pixels than this (decompression bombs). Stage 1 and the entropy
# coder work in tiles, so memory grows only with the buffers an image needs whole (its
# pixels, its features): at 64 MP, peak RSS 2.3 GB to compress, 2.1 to decompress, 1.9
# to edit, models included (python benchmarks/large_images.py --sizes 9800x6530).
MAX_PIXELS = 64_000_000
# Padding to a model's multiple may add this fraction of the limit: 9800x6530 (64.0 MP) pads
# to 9856x6592 (65.0 MP) at the photo codec's multiple of 64. An image's own pixels are held
# to the limit itself.
PADDING_ALLOWANCE = 1 / 32
# Stage 2 (the HVAE's latent codes, which latent edits move) runs on the whole feature map:
# about 50 bytes per pixel on top of stage 1's tiles (photo-edit, measured at 4 MP: 0.2 GB
# to encode), so latent codes stop at this size, the UI's upload limit
# (feature-flow edits and compression, which do not need them, go up to MAX_PIXELS).
MAX_LATENT_PIXELS = 16_000_000
# Longest side over shortest, after padding: a 1 x 16,000,000 image is a bomb in disguise.
MAX_ASPECT_RATIO = 256
# Most file systems (ext4, APFS, NTFS) refuse longer file or folder names.
MAX_COMPONENT_BYTES = 255
# Characters that change what a terminal shows (escapes, bidi overrides, line breaks).
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
# OSErrors that concern one output path (a file where a folder must go, a folder in the way,
# too long a name): that item fails and the rest of a job go on. Others (a full disk) stop it.
ONE_PATH_ERRNOS = (errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG)


def printable(text: str) -> str:
    """``text`` with every control, format or line-breaking character escaped (\\x1b, \\u202e),
    safe to print to a terminal; other characters, accents and spaces included, stay as they are."""
    return "".join(
        ascii(ch)[1:-1] if unicodedata.category(ch) in _HIDDEN_CATEGORIES else ch for ch in text
    )


def safe_relative_name(name: str) -> PurePosixPath:
    """A name read from an archive as a relative output path, or ``HVAEError`` saying what is
    wrong: empty, absolute, with a backslash, a control character, an empty, ``.`` or ``..``
    component, or a component over 255 bytes."""
    shown = repr(name[:80] + ("..." if len(name) > 80 else ""))  # repr escapes what hides
    if not name:
        raise HVAEError("empty name")
    if name.startswith("/"):
        raise HVAEError(f"{shown}: an absolute path")
    if "\\" in name:
        raise HVAEError(f"{shown}: contains a backslash")
    control = next((ch for ch in name if unicodedata.category(ch) == "Cc"), None)
    if control is not None:
        raise HVAEError(f"{shown}: contains the control character {ascii(control)}")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise HVAEError(f"{shown}: has an empty, '.' or '..' folder")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise HVAEError(f"{shown}: a file or folder name over {MAX_COMPONENT_BYTES} bytes")
    return PurePosixPath(name)


def check_image_size(
    width: int, height: int, multiple: int = 1, max_pixels: int | None = None
) -> None:
    """Refuse, with ``HVAEError``, a size that is not positive, that holds over ``max_pixels``
    pixels (default ``MAX_PIXELS``), or that once padded to a multiple of ``multiple`` (a
    model's pixel multiple, 1 for none) holds over ``max_pixels`` plus the
    ``PADDING_ALLOWANCE`` or is longer than ``MAX_ASPECT_RATIO`` times its width. Call it
    before allocating anything for an image whose size came from outside."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if width < 1 or height < 1:
        raise HVAEError(f"{width}x{height} is not an image size (both sides must be >= 1)")
    padded_w, padded_h = -(-width // multiple) * multiple, -(-height // multiple) * multiple
    size = f"{width}x{height}" + (
        f" (padded to {padded_w}x{padded_h})" if (padded_w, padded_h) != (width, height) else ""
    )
    if width * height > limit or padded_w * padded_h > limit * (1 + PADDING_ALLOWANCE):
        raise HVAEError(f"{size} pixels is over the limit of {limit}")
    if max(padded_w, padded_h) > MAX_ASPECT_RATIO * min(padded_w, padded_h):
        raise HVAEError(f"{size} is more than {MAX_ASPECT_RATIO} times longer than wide")


class OutputPaths:
    """Hands out relative output paths so that no two records write the same file: a path
    already taken gets ``-2``, ``-3``... before its suffix. Paths are compared ignoring case,
    as macOS and Windows file systems do."""

    def __init__(self):
        self._files: set[str] = set()
        self._folders: set[str] = set()

    def claim(self, path: PurePosixPath) -> PurePosixPath:
        folders = [p.as_posix().casefold() for p in path.parents if p != PurePosixPath(".")]
        clash = next((f for f in folders if f in self._files), None)
        if clash is not None:
            raise HVAEError(
                f"{printable(str(path))}: its folder {printable(clash)!r} is another image's "
                "output file"
            )
        candidate, n = path, 1
        while candidate.as_posix().casefold() in self._files | self._folders:
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        self._files.add(candidate.as_posix().casefold())
        self._folders.update(folders)
        return candidate


def create_exclusive(path: str | Path, mode: str = "wb"):
    """Open a new file that nothing (no file, no planted symlink) held before, or raise
    ``FileExistsError``."""
    flags = os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_RDWR if "+" in mode else os.O_WRONLY
    return os.fdopen(os.open(path, flags, 0o666), mode)


def publish(tmp: Path, path: Path, overwrite: bool = False) -> None:
    """Rename ``tmp`` to ``path`` in one step. Without ``overwrite`` an existing ``path`` (even a
    symlink) is refused, atomically where the file system has hard links; with it, ``path`` is
    replaced, a symlink itself and not what it points to."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError:  # no hard links here (some network or FAT file systems): check, then rename
        refuse_existing(path, overwrite)
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Without ``overwrite``, ``HVAEError`` if ``path`` exists (a dangling symlink included):
    run before any work is done, and again by ``publish`` when the output is in place."""
    if not overwrite and os.path.lexists(path):
        raise _exists(path)


def _exists(path: Path) -> HVAEError:
    return HVAEError(f"{path}: exists already; choose another output or overwrite it (--force)")


def write_file(path: str | Path, data: bytes, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers never see half a file: into a new temporary
    file in the same folder, with an unpredictable name, created without following symlinks,
    then renamed. An existing ``path`` is refused unless ``overwrite``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_existing(path, overwrite)
    tmp = path.with_name(f".{path.name[:40]}.{secrets.token_hex(8)}.tmp")
    try:
        with create_exclusive(tmp) as file:
            file.write(data)
        publish(tmp, path, overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the job is (see ``sigterm_as_interrupt``)."""


def _raise_terminated(signum, frame):
    raise Terminated(f"stopped by signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``), so
    ``finally`` and ``with`` blocks run and a job stopped by ``kill`` or a scheduler keeps what
    it finished, as after Ctrl-C. Only the main thread can set signal handlers; elsewhere
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
