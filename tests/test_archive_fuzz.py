"""Fuzzing: mutated real archives end in success or ``HVAEError``, never another exception.

Half the cases are raw mutations (bits, bytes, spans, cuts), which mostly stop at a checksum;
the other half mutate the parsed archive (record bodies, fields, names, payloads, header,
index) and rebuild it with every length and checksum right, as an attacker would, so they
reach the field parser and the entropy decoder. ``benchmarks/fuzz_archive.py`` runs 10,000
of the same cases, each in a child process, and measures their memory and time.
"""

from __future__ import annotations

import math
import random
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvae import safe_io
from hvae.archive_info import archive_info
from hvae.codec import STEP, ArchiveReader, join_tiles, split_tiles
from hvae.data.shapes import ShapesDataset
from hvae.errors import HVAEError
from tests.conftest import tiny_codec
from tests.test_archive import crafted_archive

U32_EDGES = (0, 1, 2, 3, 31, 32, 33, 255, 256, 4095, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1)
STEPS = (0.0, -1.0, float("nan"), float("inf"), 1e-30, 1e-3, 0.1, 1.6, 100.0, 1e30)
NASTY_NAMES = (
    "",
    ".",
    "..",
    "../up.png",
    "/etc/passwd",
    "a//b",
    "a/./b",
    "a\0b",
    "\x1b[2Jx",
    "c:\\x",
    "x" * 256,
    "d/" + "é" * 128,
    "a\u202egnp.exe",
    "A.PNG",
    "a.png/b",
    "same",
)
BOUNDARY_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)


def small_archives(pipe) -> list[bytes]:
    """Two small archives that ``pipe`` wrote: two images of odd sizes, and one in tiles of
    the model's smallest side (4 of them at the tiny codec's)."""
    scenes = ShapesDataset(3, seed=5, size=48)
    images = [scenes[0][0].crop((0, 0, 40, 24)), scenes[1][0].crop((0, 0, 17, 33))]
    kwargs = {"quality": 3, "refine_steps": 0}
    archives = [pipe.compress(images, names=["same", "d/two.png"], **kwargs)]
    default, pipe.coding_tile = pipe.coding_tile, 1
    try:
        archives.append(pipe.compress(scenes[2][0], names=["one"], **kwargs))
    finally:
        pipe.coding_tile = default
    return archives


def raw_mutation(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    at = rng.randrange(len(data))
    kind = rng.randrange(7)
    if kind == 0:
        data[at] ^= 1 << rng.randrange(8)
    elif kind == 1:
        data[at] = rng.choice(BOUNDARY_BYTES + (rng.randrange(256),))
    elif kind == 2:
        del data[at:]
    elif kind == 3:
        data[at:at] = rng.randbytes(rng.choice((1, 4, 12, 100)))
    elif kind == 4:
        del data[at : at + rng.choice((1, 4, 12, 100))]
    elif kind == 5:
        at -= at % 4
        data[at : at + 4] = struct.pack("<I", rng.choice(U32_EDGES + (len(data),)))
    else:
        start = rng.randrange(len(data))
        data[at:at] = data[start : start + rng.randrange(1, 200)]
    return bytes(data)


def _mutate_body(body: bytes, rng: random.Random) -> bytes:
    (name_length,) = struct.unpack_from("<H", body)
    fields = 2 + name_length
    kind = rng.randrange(6)
    if kind == 0:  # bytes anywhere, lengths and checksums fixed afterwards
        return raw_mutation(body, rng)
    if kind == 1 and rng.random() < 0.2:  # both sides at or just past the size limits
        side = math.isqrt(safe_io.MAX_PIXELS)
        sides = rng.choice(((side, side), (side - 1, side + 1), (side // 16, side * 16)))
        return body[:fields] + struct.pack("<II", *sides) + body[fields + 8 :]
    if kind == 1:  # height, width or quality
        field, form = rng.choice(((0, "<I"), (4, "<I"), (8, "<B")))
        value = rng.choice(U32_EDGES) % (256 if form == "<B" else 2**32)
        return (
            body[: fields + field]
            + struct.pack(form, value)
            + body[fields + field + len(struct.pack(form, 0)) :]
        )
    if kind == 2:  # a nasty name
        name = rng.choice(NASTY_NAMES).encode("utf-8")
        return struct.pack("<H", len(name)) + name + body[fields:]
    if kind == 3:  # the name length alone
        return struct.pack("<H", rng.choice((0, 1, name_length + 1, 65535))) + body[2:]
    payload_at = fields + 9
    if kind == 4:  # the quantization step
        return body[:payload_at] + STEP.pack(rng.choice(STEPS)) + body[payload_at + 4 :]
    tiled = body[payload_at + 4 :]
    if rng.random() < 0.2:  # the tile side and lengths, as raw bytes
        return body[: payload_at + 4] + raw_mutation(tiled, rng)
    # one tile's ANS stream: cut, extended, or words replaced (whole words, so it stays
    # well-formed and the decoder reads it), or the tile side changed
    side, streams = split_tiles(tiled)
    i = rng.randrange(len(streams))
    stream = bytearray(streams[i])
    choice = rng.randrange(4)
    if choice == 0:
        del stream[4 * rng.randrange(1, len(stream) // 4 + 1) :]
    elif choice == 1:
        stream += rng.randbytes(4 * rng.choice((1, 2, 50)))
    elif choice == 2:
        at = 4 * rng.randrange(len(stream) // 4)
        stream[at : at + 4] = rng.randbytes(4)
    else:
        side = rng.choice((1, 2, 4, 8, 16, 256))
    streams[i] = bytes(stream)
    return body[: payload_at + 4] + join_tiles(side, streams)


def fixed_mutation(data: bytes, rng: random.Random) -> bytes:
    """A mutation of the parsed archive, rebuilt with valid lengths and checksums."""
    reader = ArchiveReader(data)
    bodies = [data[offset + 8 : offset + size - 4] for offset, size in reader.entries]
    fingerprint, version, entries = reader.fingerprint.encode(), reader.version, None
    kind = rng.randrange(10)
    if kind < 6:
        i = rng.randrange(len(bodies))
        bodies[i] = _mutate_body(bodies[i], rng)
    elif kind == 6:  # the header
        if rng.random() < 0.5:
            version = rng.choice((0, 1, 3, 65535))
        else:
            fingerprint = rng.choice((rng.randbytes(16), fingerprint.upper(), b"f" * 16))
    elif kind == 7:  # records repeated or dropped
        bodies = rng.choice((bodies * rng.choice((2, 5)), bodies[1:], []))
    else:  # the index: entries repeated, swapped, moved or resized
        entries = list(crafted_archive_entries(bodies))
        choice = rng.randrange(4)
        if choice == 0:
            entries = entries * rng.choice((2, 1000))
        elif choice == 1:
            entries.reverse()
        elif entries:
            i = rng.randrange(len(entries))
            offset, size = entries[i]
            delta = rng.choice((-13, -4, -1, 1, 4, 13, 2**31))
            entries[i] = (
                (max(0, offset + delta), size) if choice == 2 else (offset, max(0, size + delta))
            )
    return crafted_archive(bodies, fingerprint=fingerprint, entries=entries, version=version)


def crafted_archive_entries(bodies: list[bytes]) -> list[tuple[int, int]]:
    """Where ``crafted_archive`` puts each record: (offset, length)."""
    return ArchiveReader(crafted_archive(bodies)).entries


def mutations(archives: list[bytes], seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` cases, alternately raw and checksum-fixed, each labelled by its kind."""
    rng = random.Random(seed)
    for i in range(count):
        archive = rng.choice(archives)
        if i % 2:
            yield "crc-fixed", fixed_mutation(archive, rng)
        else:
            yield "raw", raw_mutation(archive, rng)


def run_case(pipe, data: bytes, folder: Path) -> str:
    """Read, list and decompress one archive: 'decoded' or 'refused' (an ``HVAEError``).
    Any other exception propagates: that is what fuzzing looks for."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    archive = folder / "case.hvz"
    archive.write_bytes(data)
    try:
        archive_info(archive)
        summary = pipe.decompress_archive(archive, folder / "out", progress=False)
    except HVAEError:
        return "refused"
    return "decoded" if summary.written else "refused"


@pytest.fixture(scope="module")
def fuzz_setup():
    pipe = tiny_codec()
    return pipe, small_archives(pipe)


def test_mutated_archives_end_in_success_or_a_clear_error(fuzz_setup, tmp_path, monkeypatch):
    pipe, archives = fuzz_setup
    # Cases at the size limit then decode 0.25 MP, not 64 MP: seconds, not minutes, in all.
    monkeypatch.setattr(safe_io, "MAX_PIXELS", 2**18)
    outcomes = {"raw": [], "crc-fixed": []}
    for kind, data in mutations(archives, seed=0, count=400):
        outcomes[kind].append(run_case(pipe, data, tmp_path / "case"))
    # Both kinds ran, and the checksum-fixed half reached the decoder (some images came out).
    assert len(outcomes["raw"]) == len(outcomes["crc-fixed"]) == 200
    assert outcomes["crc-fixed"].count("decoded") > 20
    assert outcomes["raw"].count("refused") > 0
