"""The ``.hvz`` archive: many compressed images in one file that survives damage.

Layout (all integers little-endian; the spec is in docs/hvz-format.md):

  header   MAGIC (8) | version u16 | reserved u16 | model fingerprint (16 ASCII) | crc32 u32
  record*  b"HVZR" | body length u32 | body | crc32(body) u32
           body = name length u16 | name (UTF-8) | height u32 | width u32 | quality u8 | payload
  index    b"HVZI" | count u32 | count x (offset u64 | record length u32) | crc32 u32
  trailer  index offset u64 | b"HVZEND\\0\\0"

Records are written as images finish, so a file cut short still holds every
record before the cut; readers fall back to a sequential scan when the index
or trailer is missing or damaged. Every record carries its own CRC, so a
damaged record is named and skipped while the others decode.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hvae.errors import HVAEError

MAGIC = b"\x89HVZ\r\n\x1a\n"  # PNG-style: catches text-mode transfers and truncation at byte 1
# 2: the entropy model computes in float64 (see CODING_DTYPES). 1 (float32) is still read.
VERSION = 2
READABLE_VERSIONS = (1, 2)
RECORD_TAG = b"HVZR"
INDEX_TAG = b"HVZI"
END_TAG = b"HVZEND\0\0"
_HEADER = struct.Struct("<8sHH16s")
_HEADER_SIZE = _HEADER.size + 4
_TRAILER = struct.Struct("<Q8s")
_RECORD_HEAD = struct.Struct("<4sI")
_ENTRY = struct.Struct("<QI")
_FIELDS = struct.Struct("<IIB")
MAX_NAME_BYTES = 65535


class ArchiveError(HVAEError):
    """The archive as a whole cannot be read (not an .hvz file, unknown version, damaged header)."""


class DamagedRecord(HVAEError):
    """One record failed its checks; the others are unaffected."""


@dataclass
class Record:
    name: str
    height: int
    width: int
    quality: int
    payload: bytes

    def encode(self) -> bytes:
        name = self.name.encode("utf-8")
        if len(name) > MAX_NAME_BYTES:
            raise HVAEError(f"{self.name[:40]}...: name longer than {MAX_NAME_BYTES} bytes")
        return (
            struct.pack("<H", len(name))
            + name
            + _FIELDS.pack(self.height, self.width, self.quality)
            + self.payload
        )

    @classmethod
    def decode(cls, body: bytes) -> Record:
        (name_length,) = struct.unpack_from("<H", body)
        name = body[2 : 2 + name_length].decode("utf-8")
        height, width, quality = _FIELDS.unpack_from(body, 2 + name_length)
        return cls(name, height, width, quality, body[2 + name_length + _FIELDS.size :])


def _name_hint(body: bytes) -> str:
    """The name stored in a damaged record, when it still reads as one, to say which image it was."""
    try:
        return f" ({Record.decode(body).name!r}, as far as it can be read)"
    except (struct.error, UnicodeDecodeError):
        return ""


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


class ArchiveWriter:
    """Streams records into an archive.

    Given a path, it writes ``path + '.partial'`` and renames it to ``path`` on
    ``close``, so a finished archive appears atomically. If the ``with`` block
    fails, the partial file is kept and stays readable as a truncated archive,
    so finished work is not lost. Given a binary stream, it writes there.
    """

    def __init__(self, target: str | Path | BinaryIO, fingerprint: str, version: int = VERSION):
        if len(fingerprint) != 16:
            raise ValueError("the model fingerprint must be 16 hex digits")
        self.path: Path | None = None
        if isinstance(target, (str, Path)):
            self.path = Path(target)
            self.partial = self.path.with_name(self.path.name + ".partial")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO = open(self.partial, "wb")  # noqa: SIM115  (closed in close/abort)
        else:
            self._file = target
        self._start = self._file.tell()
        if version not in READABLE_VERSIONS:
            raise ValueError(f"cannot write format version {version}")
        header = _HEADER.pack(MAGIC, version, 0, fingerprint.encode("ascii"))
        self._file.write(header + struct.pack("<I", _crc(header)))
        self._entries: list[tuple[int, int]] = []
        self._names: set[str] = set()

    def add(self, record: Record) -> int:
        """Append one record; returns its size in bytes."""
        if record.name in self._names:
            raise HVAEError(f"{record.name}: two images with this name in one archive")
        body = record.encode()
        data = _RECORD_HEAD.pack(RECORD_TAG, len(body)) + body + struct.pack("<I", _crc(body))
        self._entries.append((self._file.tell() - self._start, len(data)))
        self._names.add(record.name)
        self._file.write(data)
        return len(data)

    def close(self) -> None:
        index_offset = self._file.tell() - self._start
        index = INDEX_TAG + struct.pack("<I", len(self._entries))
        index += b"".join(_ENTRY.pack(offset, length) for offset, length in self._entries)
        self._file.write(index + struct.pack("<I", _crc(index)))
        self._file.write(_TRAILER.pack(index_offset, END_TAG))
        self._file.flush()
        if self.path is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.partial, self.path)

    def abort(self) -> None:
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


class ArchiveReader:
    """Random access to an archive's records, with per-record integrity checks."""

    def __init__(self, source: str | Path | bytes):
        if isinstance(source, bytes):
            self.path, self.data = "archive", source
        else:
            self.path = Path(source)
            if not self.path.is_file():
                raise ArchiveError(f"{self.path}: no such file")
            self.data = self.path.read_bytes()
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
        if len(self.data) < _HEADER_SIZE + _TRAILER.size:
            return None
        index_offset, tag = _TRAILER.unpack_from(self.data, len(self.data) - _TRAILER.size)
        end = len(self.data) - _TRAILER.size
        if tag != END_TAG or not _HEADER_SIZE <= index_offset <= end - 12:
            return None
        index = self.data[index_offset : end - 4]
        if not index.startswith(INDEX_TAG) or struct.unpack_from("<I", self.data, end - 4)[
            0
        ] != _crc(index):
            return None
        (count,) = struct.unpack_from("<I", index, 4)
        if len(index) != 8 + count * _ENTRY.size:
            return None
        return [_ENTRY.unpack_from(index, 8 + i * _ENTRY.size) for i in range(count)]

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
            return Record.decode(body)
        except (struct.error, UnicodeDecodeError) as error:
            raise DamagedRecord(f"{where}: malformed ({error})") from None

    def records(self) -> Iterator[tuple[int, Record | DamagedRecord]]:
        """Every record in order, with damaged ones yielded as their error instead of raising."""
        for i in range(len(self.entries)):
            try:
                yield i, self.record(i)
            except DamagedRecord as error:
                yield i, error
