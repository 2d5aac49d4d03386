"""The .hvz container on its own: records, index, damage and truncation (no models involved)."""

import io

import pytest

from hvae.codec import ArchiveError, ArchiveReader, ArchiveWriter, DamagedRecord, Record

FINGERPRINT = "0123456789abcdef"


def _records(n=4):
    return [Record(f"dir/image{i}.png", 10 + i, 20 + i, 3, bytes([i]) * (50 + i)) for i in range(n)]


def _archive(tmp_path, records=None):
    path = tmp_path / "a.hvz"
    with ArchiveWriter(path, FINGERPRINT) as writer:
        for record in records or _records():
            writer.add(record)
    return path


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
    with pytest.raises(Exception, match="two images with this name"):
        with ArchiveWriter(tmp_path / "c.hvz", FINGERPRINT) as writer:
            writer.add(_records()[0])
            writer.add(_records()[0])
