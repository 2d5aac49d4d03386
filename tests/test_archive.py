"""The .hvz container on its own: records, index, damage, truncation, crafted fields, and the
safe-output helpers it writes with (no models involved)."""

import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from hvae.archive_info import archive_info
from hvae.codec import (
    INDEX_TAG,
    MAGIC,
    STEP,
    VERSION,
    ArchiveError,
    ArchiveReader,
    ArchiveWriter,
    DamagedRecord,
    Record,
    join_tiles,
)
from hvae.errors import HVAEError
from hvae.safe_io import (
    MAX_ASPECT_RATIO,
    MAX_PIXELS,
    OutputPaths,
    Terminated,
    check_image_size,
    create_exclusive,
    printable,
    safe_relative_name,
    sigterm_as_interrupt,
    write_file,
)

FINGERPRINT = "0123456789abcdef"


def _payload(i: int) -> bytes:
    """A format-3 payload: the step, then tiles (contents the container does not read)."""
    return STEP.pack(0.5) + join_tiles(64, [bytes([i + 1]) * 4 * (12 + i), b"\7" * 8])


def _tiled(side=64, reserved=0, lengths=(8,)) -> bytes:
    """A payload whose tile fields say what the caller wants, around 8 bytes of stream."""
    table = b"".join(struct.pack("<I", n) + b"\1" * 8 for n in lengths)
    return STEP.pack(0.5) + struct.pack("<HH", side, reserved) + table


def _records(n=4):
    return [Record(f"dir/image{i}.png", 10 + i, 20 + i, 3, _payload(i)) for i in range(n)]


def _archive(tmp_path, records=None):
    path = tmp_path / "a.hvz"
    with ArchiveWriter(path, FINGERPRINT) as writer:
        for record in records or _records():
            writer.add(record)
    return path


def _crc(data: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


def _body(name: bytes, height=10, width=20, quality=3, payload=None) -> bytes:
    payload = _payload(0) if payload is None else payload
    return (
        struct.pack("<H", len(name)) + name + struct.pack("<IIB", height, width, quality) + payload
    )


def crafted_archive(
    bodies: list[bytes], fingerprint=b"0123456789abcdef", entries=None, version=VERSION
) -> bytes:
    """An archive with valid checksums and lengths around whatever the bodies, header fields
    and index entries (default: where the records are) say, as an attacker would write it."""
    header = MAGIC + struct.pack("<HH", version, 0) + fingerprint
    data = header + _crc(header)
    offsets = []
    for body in bodies:
        record = b"HVZR" + struct.pack("<I", len(body)) + body + _crc(body)
        offsets.append((len(data), len(record)))
        data += record
    entries = offsets if entries is None else entries
    index = INDEX_TAG + struct.pack("<I", len(entries))
    index += b"".join(struct.pack("<QI", offset, size) for offset, size in entries)
    return data + index + _crc(index) + struct.pack("<Q", len(data)) + b"HVZEND\0\0"


def test_records_round_trip_with_random_access(tmp_path):
    path = _archive(tmp_path)
    reader = ArchiveReader(path)
    assert reader.fingerprint == FINGERPRINT and reader.complete and len(reader) == 4
    assert reader.record(2) == _records()[2]
    assert [r for _, r in reader.records()] == _records()
    assert not (tmp_path / "a.hvz.partial").exists()


def test_in_memory_archives_read_the_same(tmp_path):
    buffer = io.BytesIO()
    with ArchiveWriter(buffer, FINGERPRINT) as writer:
        for record in _records():
            writer.add(record)
    assert buffer.getvalue() == _archive(tmp_path).read_bytes()
    assert [r for _, r in ArchiveReader(buffer.getvalue()).records()] == _records()
    assert buffer.getvalue() == crafted_archive(
        [r.encode() for r in _records()]
    )  # the helper is exact


def test_a_flipped_byte_damages_only_its_record_and_names_it(tmp_path):
    path = _archive(tmp_path)
    reader = ArchiveReader(path)
    offset, size = reader.entries[1]
    data = bytearray(path.read_bytes())
    data[offset + size - 10] ^= 0x40  # inside record 2's payload
    results = [r for _, r in ArchiveReader(bytes(data)).records()]
    assert isinstance(results[1], DamagedRecord)
    assert "image1.png" in str(results[1]) and "checksum" in str(results[1])
    assert [results[i] for i in (0, 2, 3)] == [_records()[i] for i in (0, 2, 3)]


def test_a_truncated_archive_keeps_every_complete_record(tmp_path):
    path = _archive(tmp_path)
    entries = ArchiveReader(path).entries
    cut = entries[2][0] + 7  # in the middle of the third record's header
    reader = ArchiveReader(path.read_bytes()[:cut])
    assert not reader.complete
    assert [r for _, r in reader.records()] == _records()[:2]


def test_a_failed_write_leaves_a_readable_partial_file(tmp_path):
    path = tmp_path / "b.hvz"
    with pytest.raises(RuntimeError), ArchiveWriter(path, FINGERPRINT) as writer:
        writer.add(_records()[0])
        raise RuntimeError("killed")
    assert not path.exists()
    partial = ArchiveReader(tmp_path / "b.hvz.partial")
    assert [r for _, r in partial.records()] == _records()[:1]


def test_records_survive_a_sigkill_right_after_they_are_added(tmp_path):
    """Every record is flushed as it is added: a process killed at once keeps all five
    (with a buffered file, the last ones were lost)."""
    script = (
        "import os, signal, sys\n"
        "from tests.test_archive import FINGERPRINT, _records\n"
        "from hvae.codec import ArchiveWriter\n"
        "writer = ArchiveWriter(sys.argv[1], FINGERPRINT)\n"
        "for record in _records(5):\n"
        "    writer.add(record)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "k.hvz")], cwd=root)
    assert run.returncode == -signal.SIGKILL
    partial = ArchiveReader(tmp_path / "k.hvz.partial")
    assert [r for _, r in partial.records()] == _records(5)


def test_an_interrupted_archive_is_resumed_not_truncated(tmp_path):
    path = tmp_path / "r.hvz"
    with pytest.raises(KeyboardInterrupt), ArchiveWriter(path, FINGERPRINT) as writer:
        for record in _records(3):
            writer.add(record)
        raise KeyboardInterrupt
    partial = tmp_path / "r.hvz.partial"
    partial.write_bytes(partial.read_bytes()[:-5])  # the third record cut short by the kill
    with pytest.raises(HVAEError, match="interrupted run left it"):
        ArchiveWriter(path, FINGERPRINT)  # not asked to resume: refused, file untouched
    assert partial.stat().st_size > 0
    with pytest.raises(HVAEError, match="started by model"):
        ArchiveWriter(path, "fedcba9876543210", resume=True)
    before = partial.read_bytes()
    with pytest.raises(RuntimeError), ArchiveWriter(path, FINGERPRINT, resume=True):
        raise RuntimeError("the caller refuses before adding anything")
    assert partial.read_bytes() == before  # nothing is truncated until a record is written
    with ArchiveWriter(path, FINGERPRINT, resume=True) as writer:
        assert [record for record, _ in writer.resumed] == _records(2)
        for record in _records(4)[2:]:
            writer.add(record)
    assert path.read_bytes() == _archive(tmp_path).read_bytes()  # as if never interrupted


def test_existing_outputs_and_planted_symlinks_are_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    out = tmp_path / "o.hvz"
    out.write_bytes(b"old")
    with pytest.raises(HVAEError, match="exists already"):
        ArchiveWriter(out, FINGERPRINT)
    with ArchiveWriter(out, FINGERPRINT, overwrite=True) as writer:
        writer.add(_records()[0])
    assert len(ArchiveReader(out)) == 1
    (tmp_path / "s.hvz.partial").symlink_to(victim)
    for resume in (False, True):
        with pytest.raises(HVAEError, match="partial"):
            ArchiveWriter(tmp_path / "s.hvz", FINGERPRINT, resume=resume)
    assert victim.read_bytes() == b"keep me"


def test_not_an_archive_and_unknown_versions_are_refused(tmp_path):
    bogus = tmp_path / "x.hvz"
    bogus.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(ArchiveError, match="not an .hvz archive"):
        ArchiveReader(bogus)
    data = bytearray(_archive(tmp_path).read_bytes())
    data[8] = 9  # version field
    with pytest.raises(ArchiveError, match="header is damaged"):
        ArchiveReader(bytes(data))
    with pytest.raises(ArchiveError, match="no such file"):
        ArchiveReader(tmp_path / "missing.hvz")


def test_duplicate_names_are_refused(tmp_path):
    with pytest.raises(HVAEError, match="two images with this name"):
        with ArchiveWriter(tmp_path / "c.hvz", FINGERPRINT) as writer:
            writer.add(_records()[0])
            writer.add(_records()[0])


def test_a_non_hex_fingerprint_is_refused_as_a_whole():
    with pytest.raises(ArchiveError, match="fingerprint .* is not hex"):
        ArchiveReader(crafted_archive([_body(b"a")], fingerprint=b"\xff" * 16))


@pytest.mark.parametrize(
    "entries, problem",
    [
        (lambda end, one: [(end - 4, 4)], "shorter than any record"),  # was struct.error
        (lambda end, one: [one] * 20000, "overlaps"),  # was 385 s of decoding one record
        (lambda end, one: [(one[0], one[1] + 8)], "runs past the records"),
        (lambda end, one: [(0, one[1])], "overlaps the header"),
    ],
)
def test_index_entries_out_of_place_are_refused_at_once(entries, problem):
    data = crafted_archive([_body(b"a")])
    one = ArchiveReader(data).entries[0]
    started = time.perf_counter()
    with pytest.raises(ArchiveError, match=f"index entry \\d+ .*{problem}"):
        ArchiveReader(crafted_archive([_body(b"a")], entries=entries(len(data), one)))
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    "body, problem",
    [
        (_body(b"\xff\xfe"), "not UTF-8"),  # was UnicodeDecodeError
        (_body(b"a\0b"), "control character"),  # was ValueError when writing
        (_body(b"a/./b"), "'.'"),
        (_body(b"."), "'.'"),
        (_body(b"../up"), "'..'"),
        (_body(b"/etc/passwd"), "absolute"),
        (_body(b"a\\b"), "backslash"),
        (_body(b"\x1b[2Jx"), "control character"),
        (_body(b"d/" + b"x" * 256), "over 255 bytes"),  # was OSError when writing
        (_body(b""), "empty name"),
        (_body(b"a", width=0), "not an image size"),  # was ZeroDivisionError in info
        (_body(b"a", 100_000, 100_000), "over the limit"),  # was 6 GB of decoding
        (_body(b"a", 1, 16_000_000), "times longer than wide"),
        (_body(b"a", quality=0), "quality 0"),
        (_body(b"a", payload=b"\0\0"), "not a step"),
        (_body(b"a", payload=STEP.pack(float("nan"))), "not a positive number"),
        (_body(b"a", payload=STEP.pack(0.5)), "ends before its tile side"),
        (_body(b"a", payload=_tiled(lengths=())), "holds no tiles"),
        (_body(b"a", payload=_tiled(side=0)), "tile side 0 is not 1 to 256"),
        (_body(b"a", payload=_tiled(side=257)), "tile side 257"),
        (_body(b"a", payload=_tiled(reserved=1)), "reserved field after the tile side is 1"),
        (_body(b"a", payload=_tiled(lengths=(8, 0))), "tile 2: a stream of 0 bytes"),
        (_body(b"a", payload=_tiled(lengths=(6,))), "tile 1: a stream of 6 bytes"),
        (_body(b"a", payload=_tiled(lengths=(8, 2**32 - 4))), "tile 2: a stream of 4294967292"),
        (_body(b"a")[:8], "ends inside its size"),
        (b"\x05", "name length"),
    ],
)
def test_malformed_fields_damage_their_record_with_a_reason(body, problem):
    good = _body(b"ok")
    results = [
        r for _, r in ArchiveReader(crafted_archive([good, body, good[:-1] + b"\1"])).records()
    ]
    assert isinstance(results[1], DamagedRecord) and problem in str(results[1])
    assert "record 2" in str(results[1])
    assert [type(results[0]), type(results[2])] == [Record, Record]
    info = archive_info(crafted_archive([body]))
    assert info["images"] == [] and len(info["damaged"]) == 1


def test_the_writer_refuses_what_readers_would(tmp_path):
    for record in (
        Record("../x", 10, 10, 3, _payload(0)),
        Record("a", 0, 10, 3, _payload(0)),
        Record("a", 10, 10, 3, b"\0\0\0\0"),
    ):
        with pytest.raises(HVAEError):
            ArchiveWriter(io.BytesIO(), FINGERPRINT).add(record)


def test_info_of_an_empty_archive_has_no_bpp_and_escapes_names(tmp_path):
    buffer = io.BytesIO()
    ArchiveWriter(buffer, FINGERPRINT).close()
    info = archive_info(buffer.getvalue())
    assert info["images"] == [] and info["bpp"] is None  # was 480 bpp
    info = archive_info(crafted_archive([_body("a\u202eb\x7f".encode())]))
    assert "\u202e" not in info["damaged"][0] and "\\u202e" in info["damaged"][0]
    info = archive_info(
        crafted_archive([_body("x\u202egnp.exe".encode())])
    )  # Cf: legal, shown escaped
    assert info["images"][0]["name"] == "x\\u202egnp.exe"


def test_archive_info_imports_no_heavy_library():
    script = (
        "import sys, types\n"
        "package = types.ModuleType('hvae'); package.__path__ = ['hvae']\n"
        "sys.modules['hvae'] = package  # judge the module by its own imports\n"
        "import hvae.archive_info\n"
        "print(sorted({'torch', 'numpy', 'PIL', 'diffusers'} & set(sys.modules)))\n"
    )
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root)
    assert run.stdout.strip() == "[]", run.stderr


# ---------------------------------------------------------------- hvae.safe_io
def test_safe_names_keep_ordinary_unicode():
    for name in ("a.png", "dir/sub/x y.JPG", "Screenshot 10.00\u202fAM.png", "..a", "é/ü.png"):
        assert str(safe_relative_name(name)) == name
    assert printable("a\x1b[31m\u2028b") == "a\\x1b[31m\\u2028b"


def test_image_sizes_are_checked_before_and_after_padding():
    check_image_size(8000, 8000, multiple=64)
    with pytest.raises(HVAEError, match=r"padded to 8064x8000\) pixels is over the limit"):
        check_image_size(8001, 8000, multiple=64)  # 64.008 MP of its own
    # 64.0 MP of its own, 65.0 MP padded to the photo codec's 64: was refused.
    check_image_size(9800, 6530, multiple=64)
    # Padding may add PADDING_ALLOWANCE of the limit, no more: 3,900 pixels pad to 5,120.
    check_image_size(65, 60, multiple=16, max_pixels=5120)
    with pytest.raises(HVAEError, match=r"65x60 \(padded to 80x64\) pixels is over the limit"):
        check_image_size(65, 60, multiple=16, max_pixels=4096)
    check_image_size(1, MAX_ASPECT_RATIO, multiple=1)
    with pytest.raises(HVAEError, match="longer than wide"):
        check_image_size(1, MAX_ASPECT_RATIO + 1)
    with pytest.raises(HVAEError, match="over the limit of 100"):
        check_image_size(10, 11, max_pixels=100)
    assert MAX_PIXELS == 64_000_000


def test_output_paths_never_collide(tmp_path):
    paths = OutputPaths()
    claimed = [str(paths.claim(safe_relative_name(n))) for n in ("a.png", "A.png", "a.png")]
    assert claimed == ["a.png", "A-2.png", "a-3.png"]
    paths.claim(safe_relative_name("d/x.png"))
    assert str(paths.claim(safe_relative_name("d"))) == "d-2"  # a file where a folder is
    with pytest.raises(HVAEError, match="another image's output file"):
        paths.claim(safe_relative_name("a.png/y.png"))


def test_write_file_never_follows_or_clobbers(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    target = tmp_path / "out" / "x.png"
    write_file(target, b"one")
    with pytest.raises(HVAEError, match="exists already"):
        write_file(target, b"two")
    assert target.read_bytes() == b"one"
    link = tmp_path / "out" / "link.png"
    link.symlink_to(victim)
    with pytest.raises(HVAEError, match="exists already"):
        write_file(link, b"two")
    write_file(link, b"two", overwrite=True)  # replaces the link, not what it points to
    assert victim.read_bytes() == b"keep me" and link.read_bytes() == b"two"
    assert not link.is_symlink()
    planted = tmp_path / "out" / ".x.png.tmp"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        create_exclusive(planted)
    assert victim.read_bytes() == b"keep me"
    assert sorted(p.name for p in target.parent.iterdir()) == [".x.png.tmp", "link.png", "x.png"]


def test_sigterm_becomes_keyboard_interrupt_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs before this ends
    assert signal.getsignal(signal.SIGTERM) is before
