"""The ``.hvz`` archive: many compressed images in one file that survives damage.

Layout (all integers little-endian; the spec is in docs/hvz-format.md):

  header   MAGIC (8) | version u16 | reserved u16 | model fingerprint (16 ASCII) | crc32 u32
  record*  b"HVZR" | body length u32 | body | crc32(body) u32
           body = name length u16 | name (UTF-8) | height u32 | width u32 | quality u8 | payload
           payload = quantization step f32 | tile side u16 | reserved u16 (0)
                     | per tile: stream length u32 | ANS stream (u32 words)
           (versions 1 and 2: quantization step f32 | one ANS stream for the whole image)
  index    b"HVZI" | count u32 | count x (offset u64 | record length u32) | crc32 u32
  trailer  index offset u64 | b"HVZEND\\0\\0"

Records are written as images finish, so a file cut short still holds every
record before the cut; readers fall back to a sequential scan when the index
or trailer is missing or damaged. Every record carries its own CRC, so a
damaged record is named and skipped while the others decode.

Since version 3 the features are coded in independent tiles (``coding_tiles``), each
its own ANS stream: a decoder holds one tile of the entropy model's work at a time, and
learns from the lengths alone, before any decoding, whether a record holds the tiles its
declared size needs.

Everything read from a file is checked here, once, before anyone acts on it:
a field out of range raises ``ArchiveError`` (the file as a whole) or
``DamagedRecord`` (one record), each naming the field, so decompress, info
and the UI all refuse crafted files the same way.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hvae.codec_settings import QUALITY_LEVELS
from hvae.errors import HVAEError
from hvae.safe_io import (
    check_image_size,
    create_exclusive,
    printable,
    publish,
    refuse_existing,
    safe_relative_name,
)

MAGIC = b"\x89HVZ\r\n\x1a\n"  # PNG-style: catches text-mode transfers and truncation at byte 1
# 3: features coded in tiles. 2: the entropy model computes in float64 (see CODING_DTYPES);
# 1 (float32) and 2 code the whole image in one stream. All three are read.
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
TILED_VERSION = 3
RECORD_TAG = b"HVZR"
INDEX_TAG = b"HVZI"
END_TAG = b"HVZEND\0\0"
_HEADER = struct.Struct("<8sHH16s")
_HEADER_SIZE = _HEADER.size + 4
_TRAILER = struct.Struct("<Q8s")
_RECORD_HEAD = struct.Struct("<4sI")
_ENTRY = struct.Struct("<QI")
_FIELDS = struct.Struct("<IIB")
STEP = struct.Struct("<f")  # the payload's first field
_TILE_HEAD = struct.Struct("<HH")  # tile side in feature cells, reserved (0)
_TILE_LENGTH = struct.Struct("<I")
# Tiles of at most this many feature cells a side: 2,048 pixels at the photo model's stride.
# It bounds what one tile of a crafted record makes a decoder compute.
MAX_TILE_SIDE = 256
MAX_NAME_BYTES = 65535
# Tag, length and CRC: an index entry shorter than that cannot even be checked. (A longer
# one whose body is too short for its fields is one damaged record, not a damaged index.)
_MIN_RECORD = _RECORD_HEAD.size + 4
# A record is flushed as soon as it is written, so a killed process loses none; every
# this many records it is also fsynced, so a power cut loses at most this many.
FSYNC_EVERY = 8


class ArchiveError(HVAEError):
    """The archive as a whole cannot be read (not an .hvz file, unknown version, damaged header)."""


class DamagedRecord(HVAEError):
    """One record failed its checks; the others are unaffected."""


def split_payload(payload: bytes) -> tuple[float, bytes]:
    """A payload -> (quantization step, what follows it: the ANS stream, or since version 3
    the tiles that ``split_tiles`` reads), or ``DamagedRecord`` saying what is wrong."""
    if len(payload) < STEP.size or (len(payload) - STEP.size) % 4:
        raise DamagedRecord(f"payload of {len(payload)} bytes is not a step and whole 32-bit words")
    (step,) = STEP.unpack_from(payload)
    if not (math.isfinite(step) and step > 0):
        raise DamagedRecord(f"quantization step {step} is not a positive number")
    return step, payload[STEP.size :]


def split_tiles(tiled: bytes) -> tuple[int, list[bytes]]:
    """What follows the step in a version-3 payload -> (tile side, one ANS stream per tile),
    or ``DamagedRecord`` saying what is wrong."""
    if len(tiled) < _TILE_HEAD.size:
        raise DamagedRecord("the payload ends before its tile side")
    side, reserved = _TILE_HEAD.unpack_from(tiled)
    if not 1 <= side <= MAX_TILE_SIDE:
        raise DamagedRecord(f"tile side {side} is not 1 to {MAX_TILE_SIDE}")
    if reserved:
        raise DamagedRecord(f"the reserved field after the tile side is {reserved}, not 0")
    streams, at = [], _TILE_HEAD.size
    while at < len(tiled):
        if at + _TILE_LENGTH.size > len(tiled):
            raise DamagedRecord(f"tile {len(streams) + 1}: the payload ends inside its length")
        (length,) = _TILE_LENGTH.unpack_from(tiled, at)
        at += _TILE_LENGTH.size
        # Every symbol costs some bits, so no tile codes to nothing.
        if not length or length % 4 or at + length > len(tiled):
            raise DamagedRecord(
                f"tile {len(streams) + 1}: a stream of {length} bytes is not whole 32-bit "
                f"words within the {len(tiled) - at} bytes left"
            )
        streams.append(tiled[at : at + length])
        at += length
    if not streams:
        raise DamagedRecord("the payload holds no tiles")
    return side, streams


def join_tiles(side: int, streams: list[bytes]) -> bytes:
    """``split_tiles``'s input: the tile side and the tiles' streams, each after its length."""
    parts = [_TILE_HEAD.pack(side, 0)]
    for stream in streams:
        parts += [_TILE_LENGTH.pack(len(stream)), stream]
    return b"".join(parts)


def even_splits(length: int, most: int, align: int = 1) -> list[int]:
    """Bounds that split ``[0, length)`` into the fewest near-equal parts of at most ``most``
    positions, each starting on a multiple of ``align`` (``most`` must be one; ``length``
    too, unless the last part may end off the grid). Integers only: format version 3
    places its tiles by it, and every decoder must place them alike."""
    units, count = -(-length // align), -(-length // most)
    return [min(length, i * units // count * align) for i in range(count + 1)]


def coding_tiles(feature_size: tuple[int, int], side: int, align: int) -> list[tuple[int, ...]]:
    """(top, bottom, left, right) of every tile of a version-3 payload, in coding order (rows
    of tiles, top first): ``feature_size`` split by ``even_splits`` into parts of at most
    ``side`` cells that start on multiples of ``align`` (the entropy model's feature multiple)."""
    rows, columns = (even_splits(length, side, align) for length in feature_size)
    return [
        (top, bottom, left, right)
        for top, bottom in zip(rows, rows[1:], strict=False)
        for left, right in zip(columns, columns[1:], strict=False)
    ]


@dataclass
class Record:
    name: str
    height: int
    width: int
    quality: int
    payload: bytes

    def check(self, version: int = VERSION) -> None:
        """``HVAEError`` naming the first field that no archive of ``version`` may hold."""
        safe_relative_name(self.name)
        check_image_size(self.width, self.height)
        if not 1 <= self.quality <= QUALITY_LEVELS:
            raise HVAEError(f"quality {self.quality} is not 1 to {QUALITY_LEVELS}")
        _, coded = split_payload(self.payload)
        if version >= TILED_VERSION:
            split_tiles(coded)

    def encode(self, version: int = VERSION) -> bytes:
        name = self.name.encode("utf-8")
        if len(name) > MAX_NAME_BYTES:
            raise HVAEError(f"{self.name[:40]}...: name longer than {MAX_NAME_BYTES} bytes")
        self.check(version)  # never write what a reader would refuse
        return (
            struct.pack("<H", len(name))
            + name
            + _FIELDS.pack(self.height, self.width, self.quality)
            + self.payload
        )

    @classmethod
    def decode(cls, body: bytes, version: int = VERSION) -> Record:
        """A record body of an archive of ``version`` -> its record, or ``DamagedRecord``
        naming the malformed field."""
        name, fields_at = _read_name(body)
        if len(body) < fields_at + _FIELDS.size:
            raise DamagedRecord("the record ends inside its size and quality fields")
        height, width, quality = _FIELDS.unpack_from(body, fields_at)
        record = cls(name, height, width, quality, body[fields_at + _FIELDS.size :])
        try:
            record.check(version)
        except HVAEError as error:
            raise DamagedRecord(str(error)) from None
        return record


def _read_name(body: bytes) -> tuple[str, int]:
    """The name a record body holds, and where the fields after it start."""
    if len(body) < 2:
        raise DamagedRecord("the record ends inside its name length")
    (length,) = struct.unpack_from("<H", body)
    if len(body) < 2 + length:
        raise DamagedRecord(f"name of {length} bytes is longer than the record")
    try:
        return body[2 : 2 + length].decode("utf-8"), 2 + length
    except UnicodeDecodeError:
        raise DamagedRecord("the name is not UTF-8") from None


def _name_hint(body: bytes) -> str:
    """The name stored in a damaged record, when it still reads as one, to say which image it was."""
    try:
        return f" ({printable(_read_name(body)[0])!r}, as far as it can be read)"
    except DamagedRecord:
        return ""


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def partial_path(path: Path) -> Path:
    """Where an archive is written until it is complete."""
    return path.with_name(path.name + ".partial")


class ArchiveWriter:
    """Streams records into an archive.

    Given a path, it writes ``path + '.partial'`` and renames it to ``path`` on
    ``close``, so a finished archive appears atomically; an existing ``path`` is
    refused unless ``overwrite``. The partial file is created at the first record
    (nothing that held that name before, not even a symlink, is followed or
    truncated); each record is flushed as it is added. If the ``with`` block fails,
    the partial file is kept and stays readable as a truncated archive, so finished
    work is not lost; with ``resume``, a partial file left by an earlier run of the
    same model is continued: its undamaged leading records are kept (listed in
    ``resumed``) and new ones appended after them. Given a binary stream, it writes there.
    """

    def __init__(
        self,
        target: str | Path | BinaryIO,
        fingerprint: str,
        version: int = VERSION,
        overwrite: bool = False,
        resume: bool = False,
    ):
        if len(fingerprint) != 16:
            raise ValueError("the model fingerprint must be 16 hex digits")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"cannot write format version {version}")
        header = _HEADER.pack(MAGIC, version, 0, fingerprint.encode("ascii"))
        self._header = header + struct.pack("<I", _crc(header))
        self.version = version
        self.overwrite = overwrite
        self.resumed: list[tuple[Record, int]] = []  # (record, its size in bytes)
        self._entries: list[tuple[int, int]] = []
        self._names: set[str] = set()
        self._file: BinaryIO | None = None  # path targets: opened by _open, closed by close/abort
        self._resume_at: int | None = None  # where a resumed partial file's records end
        self.path: Path | None = None
        if isinstance(target, (str, Path)):
            self.path = Path(target)
            self.partial = partial_path(self.path)
            refuse_existing(self.path, overwrite)
            if os.path.lexists(self.partial):
                if not resume:
                    raise HVAEError(
                        f"{self.partial} exists: an interrupted run left it. It decodes as it "
                        "is (hvae decompress); move or delete it to write this archive"
                    )
                self._resume(fingerprint, version)
        else:
            self._file = target
            self._start = target.tell()
            target.write(self._header)

    def _resume(self, fingerprint: str, version: int) -> None:
        if self.partial.is_symlink():
            raise HVAEError(f"{self.partial}: is a symlink; this run does not write through it")
        try:
            reader = ArchiveReader(self.partial)
        except ArchiveError as error:
            raise HVAEError(f"cannot continue {self.partial} ({error}); delete it") from None
        if (reader.fingerprint, reader.version) != (fingerprint, version):
            raise HVAEError(
                f"{self.partial} was started by model {reader.fingerprint} (format version "
                f"{reader.version}), not this one; delete it or decode it with its own model"
            )
        self._resume_at = _HEADER_SIZE
        for i, record in reader.records():
            if isinstance(record, DamagedRecord):
                break  # a record cut short by the kill, and anything after it, is redone
            self.resumed.append((record, reader.entries[i][1]))
            self._names.add(record.name)
            self._entries.append(reader.entries[i])
            self._resume_at = sum(reader.entries[i])

    def _open(self) -> BinaryIO:
        """The file, opened at the first write: a run refused before it leaves files as they were."""
        if self._file is None and self._resume_at is not None:
            self._file = open(self.partial, "r+b", opener=_no_follow)  # noqa: SIM115
            self._file.truncate(self._resume_at)  # drops what the kill cut short, or an index
            self._file.seek(self._resume_at)
            self._start = 0
        elif self._file is None:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self._file = create_exclusive(self.partial)
            self._start = 0
            self._file.write(self._header)
        return self._file

    def add(self, record: Record) -> int:
        """Append one record and flush it; returns its size in bytes."""
        if record.name in self._names:
            raise HVAEError(f"{printable(record.name)}: two images with this name in one archive")
        body = record.encode(self.version)
        data = _RECORD_HEAD.pack(RECORD_TAG, len(body)) + body + struct.pack("<I", _crc(body))
        file = self._open()
        self._entries.append((file.tell() - self._start, len(data)))
        self._names.add(record.name)
        file.write(data)
        file.flush()
        if self.path is not None and len(self._entries) % FSYNC_EVERY == 0:
            os.fsync(file.fileno())
        return len(data)

    def close(self) -> None:
        file = self._open()
        index_offset = file.tell() - self._start
        index = INDEX_TAG + struct.pack("<I", len(self._entries))
        index += b"".join(_ENTRY.pack(offset, length) for offset, length in self._entries)
        file.write(index + struct.pack("<I", _crc(index)))
        file.write(_TRAILER.pack(index_offset, END_TAG))
        file.flush()
        if self.path is not None:
            os.fsync(file.fileno())
            file.close()
            publish(self.partial, self.path, self.overwrite)

    def abort(self) -> None:
        if self._file is not None:
            self._file.flush()
            if self.path is not None:
                self._file.close()

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _no_follow(path, flags):
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


class ArchiveReader:
    """Random access to an archive's records, with per-record integrity checks."""

    def __init__(self, source: str | Path | bytes):
        if isinstance(source, bytes):
            self.path, self.data = "archive", source
        else:
            self.path = Path(source)
            if not self.path.is_file():
                raise ArchiveError(f"{self.path}: no such file")
            try:
                self.data = self.path.read_bytes()
            except OSError as error:
                raise ArchiveError(f"{self.path}: unreadable ({error.strerror})") from None
        if len(self.data) < _HEADER_SIZE or not self.data.startswith(MAGIC):
            raise ArchiveError(f"{self.path}: not an .hvz archive (bad magic bytes)")
        header = self.data[: _HEADER.size]
        _, version, _, fingerprint = _HEADER.unpack(header)
        if struct.unpack_from("<I", self.data, _HEADER.size)[0] != _crc(header):
            raise ArchiveError(f"{self.path}: the header is damaged (checksum mismatch)")
        if version not in READABLE_VERSIONS:
            readable = " and ".join(map(str, READABLE_VERSIONS))
            raise ArchiveError(
                f"{self.path}: format version {version}; this hvae reads versions {readable}"
            )
        if not all(c in b"0123456789abcdef" for c in fingerprint):
            raise ArchiveError(f"{self.path}: the model fingerprint {fingerprint!r} is not hex")
        self.version = version
        self.fingerprint = fingerprint.decode("ascii")
        self.indexed = True
        self.entries = self._read_index()
        if self.entries is None:
            self.indexed = False
            self.entries = self._scan()

    @property
    def complete(self) -> bool:
        """False for a file without a valid index: cut short or damaged at the end."""
        return self.indexed

    def _read_index(self) -> list[tuple[int, int]] | None:
        """The index's entries; None when it is missing or damaged (then records are scanned).
        An index whose checksum holds but that lists records out of place was written so on
        purpose or by a bug: ``ArchiveError``."""
        if len(self.data) < _HEADER_SIZE + _TRAILER.size:
            return None
        index_offset, tag = _TRAILER.unpack_from(self.data, len(self.data) - _TRAILER.size)
        end = len(self.data) - _TRAILER.size
        if tag != END_TAG or not _HEADER_SIZE <= index_offset <= end - 12:
            return None
        index = self.data[index_offset : end - 4]
        (stored,) = struct.unpack_from("<I", self.data, end - 4)
        if not index.startswith(INDEX_TAG) or stored != _crc(index):
            return None
        (count,) = struct.unpack_from("<I", index, 4)
        if len(index) != 8 + count * _ENTRY.size:
            return None
        entries = [_ENTRY.unpack_from(index, 8 + i * _ENTRY.size) for i in range(count)]
        previous_end = _HEADER_SIZE
        for i, (offset, size) in enumerate(entries):
            if size < _MIN_RECORD:
                problem = f"is {size} bytes long, shorter than any record"
            elif offset < previous_end:
                problem = "overlaps the header or the record before it"
            elif offset + size > index_offset:
                problem = "runs past the records into the index"
            else:
                previous_end = offset + size
                continue
            raise ArchiveError(
                f"{self.path}: index entry {i + 1} (record at byte {offset}, {size} bytes) {problem}"
            )
        return entries

    def _scan(self) -> list[tuple[int, int]]:
        """Walk records from the header until the first one that is cut short or not a record."""
        entries, offset = [], _HEADER_SIZE
        while offset + _RECORD_HEAD.size <= len(self.data):
            tag, length = _RECORD_HEAD.unpack_from(self.data, offset)
            size = _RECORD_HEAD.size + length + 4
            if tag != RECORD_TAG or offset + size > len(self.data):
                break
            entries.append((offset, size))
            offset += size
        return entries

    def __len__(self) -> int:
        return len(self.entries)

    def record(self, i: int) -> Record:
        """Record ``i``, or ``DamagedRecord`` saying what failed."""
        offset, size = self.entries[i]
        where = f"record {i + 1} at byte {offset}"
        if offset + size > len(self.data):
            raise DamagedRecord(f"{where}: cut short")
        tag, length = _RECORD_HEAD.unpack_from(self.data, offset)
        if tag != RECORD_TAG or _RECORD_HEAD.size + length + 4 != size:
            raise DamagedRecord(f"{where}: damaged record header")
        body = self.data[offset + _RECORD_HEAD.size : offset + _RECORD_HEAD.size + length]
        (stored,) = struct.unpack_from("<I", self.data, offset + size - 4)
        if stored != _crc(body):
            raise DamagedRecord(
                f"{where}{_name_hint(body)}: checksum mismatch (the data is damaged)"
            )
        try:
            return Record.decode(body, self.version)
        except DamagedRecord as error:
            raise DamagedRecord(f"{where}{_name_hint(body)}: malformed: {error}") from None

    def records(self) -> Iterator[tuple[int, Record | DamagedRecord]]:
        """Every record in order, with damaged ones yielded as their error instead of raising."""
        for i in range(len(self.entries)):
            try:
                yield i, self.record(i)
            except DamagedRecord as error:
                yield i, error
