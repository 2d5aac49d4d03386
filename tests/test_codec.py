"""Entropy coding and the compression pipeline, on tiny untrained models."""

import contextlib
import hashlib
import io
import itertools
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hvae.cli import main
from hvae.codec import (
    STEP,
    ArchiveReader,
    ArchiveWriter,
    DamagedRecord,
    Record,
    coding_tiles,
    even_splits,
    join_tiles,
    split_payload,
    split_tiles,
)
from hvae.data.images import FLATTENED_ALPHA, as_rgb, to_pil, to_tensor
from hvae.data.shapes import ShapesDataset
from hvae.entropy import decode_symbols, decode_tiles, encode_symbols, pack
from hvae.errors import HVAEError
from hvae.refine import rd_cost
from hvae.train_codec import make_codec_model
from pipelines import HVAECompressionPipeline, HVAEPipeline
from pipelines.compression_pipeline import EARLIER_BUNDLED_PHOTO, quality_step
from tests.conftest import tiny_autoencoder, tiny_codec, tiny_hvae

BUNDLED_PHOTO = Path(__file__).resolve().parents[1] / "checkpoints" / "photo"


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("codec") / "pipeline"
    tiny_codec().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def codec(codec_dir):
    return HVAECompressionPipeline.from_pretrained(codec_dir)


@pytest.fixture(scope="module")
def scenes():
    dataset = ShapesDataset(4, seed=3, size=96)
    # Odd sizes exercise padding to the model's stride and cropping back.
    return [dataset[i][0].crop((0, 0, 96 - 5 * i, 90 - 3 * i)) for i in range(4)]


def _same(a: list[Image.Image], b: list[Image.Image]) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True)
    )


def test_decoder_rebuilds_exactly_what_the_encoder_quantized():
    model = make_codec_model("tiny", 4).eval()
    features = torch.randn(1, 4, 24, 40)
    for step in (0.1, 0.7, 2.5):
        chunks, expected = encode_symbols(model, features, step)
        decoded = decode_symbols(model, pack(chunks), step, (24, 40))
        assert torch.equal(decoded, expected)
        # the quantization error is at most half a step
        assert (expected - features).abs().max() <= step / 2 + 1e-5


def test_round_trip_keeps_sizes_and_order(codec, scenes):
    data = codec.compress(scenes, quality=5)
    decoded = codec.decompress(data)
    assert [d.size for d in decoded] == [s.size for s in scenes]
    assert [r.name for _, r in ArchiveReader(data).records()] == [
        f"image-{i:05d}" for i in range(4)
    ]


def test_higher_quality_costs_more_bytes(codec, scenes):
    sizes = [len(codec.encode_image(scenes[0], q)) for q in (1, 4, 8)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_coded_bytes_are_within_one_percent_of_the_model_bits(codec):
    image = ShapesDataset(1, seed=9, size=256)[0][0]
    payload, bits = codec.encode_image(image, 8, return_bits=True)
    _, streams = split_tiles(split_payload(payload)[1])
    stream_bits = 8 * sum(len(stream) for stream in streams)
    assert len(streams) == 1  # 32x32 features: one tile of 64
    assert bits > 1000  # a meaningful stream, not a few words of coder state
    assert stream_bits <= 1.01 * bits


def test_tiles_decode_to_what_the_encoder_quantized_whatever_the_thread_count(codec, scenes):
    """Each tile is coded alone (its own global latent and stream) and computed on one thread;
    tiles run side by side on the threads the caller allows."""
    image = scenes[1]  # 91x87: 12x12 features at the tiny codec's multiple of 32
    payloads, decoded = [], []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            with small_tiles(codec, 4):
                payloads.append(codec.encode_image(image, 4, refine_steps=2))
                decoded.append(codec.decode_image(payloads[-1], (image.height, image.width)))
    finally:
        torch.set_num_threads(threads)
    assert payloads[0] == payloads[1] and _same(decoded[:1], decoded[1:])
    side, streams = split_tiles(split_payload(payloads[0])[1])
    assert (side, len(streams)) == (4, 9)
    # The decoder places every tile where the encoder took it from.
    step = quality_step(4)
    with torch.no_grad():
        features = codec.features_of(image)
        model = codec.coding_model()
        expected = torch.empty_like(features)
        tiles = coding_tiles(features.shape[-2:], 4, codec.hvae.feature_multiple)
        for top, bottom, left, right in tiles:
            _, expected[..., top:bottom, left:right] = encode_symbols(
                model, features[..., top:bottom, left:right], step
            )
        with small_tiles(codec, 4):
            plain = codec.encode_image(image, 4, refine_steps=0)
        rebuilt = decode_tiles(model, split_tiles(split_payload(plain)[1])[1], step, tiles)
    assert torch.equal(rebuilt, expected)


@contextlib.contextmanager
def small_tiles(codec, side):
    previous = codec.coding_tile
    codec.coding_tile = side
    try:
        yield
    finally:
        codec.coding_tile = previous


def test_tiles_split_features_evenly_on_the_models_grid():
    assert even_splits(24, 8, 4) == [0, 8, 16, 24]
    assert even_splits(28, 8, 4) == [0, 4, 12, 20, 28]  # 7 units in 4 parts: 1, 2, 2, 2
    assert even_splits(1000, 64, 8) == [i * 125 // 16 * 8 for i in range(17)]
    assert max(b - a for a, b in itertools.pairwise(even_splits(1000, 64, 8))) <= 64
    assert coding_tiles((8, 12), 8, 4) == [(0, 8, 0, 4), (0, 8, 4, 12)]


def decodes_identically(pipe, images, quality) -> bool:
    """Decode one archive on 2 threads and on 1, and each image from its own archive: all equal?"""
    together = pipe.compress(images, quality=quality)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two_threads = pipe.decompress(together)
        torch.set_num_threads(1)
        one_thread = pipe.decompress(together)
    finally:
        torch.set_num_threads(threads)
    one_at_a_time = [pipe.decompress(pipe.compress(i, quality=quality))[0] for i in images]
    return _same(two_threads, one_thread) and _same(two_threads, one_at_a_time)


def test_decode_is_bit_identical_across_threads_and_batch_sizes(codec, scenes):
    assert decodes_identically(codec, scenes, quality=4)


def test_a_different_model_is_refused_naming_both_fingerprints(codec, scenes):
    data = codec.compress(scenes[:1])
    other = tiny_codec(seed=1)
    with pytest.raises(HVAEError) as error:
        other.decompress(data)
    assert codec.fingerprint() in str(error.value) and other.fingerprint() in str(error.value)
    assert "git archive" not in str(error.value)  # no model this project ever bundled


def test_an_archive_of_an_earlier_bundled_model_says_where_that_model_is(
    codec, scenes, monkeypatch
):
    data = codec.compress(scenes[:1])
    monkeypatch.setitem(EARLIER_BUNDLED_PHOTO, codec.fingerprint(), "abc1234")
    with pytest.raises(HVAEError, match="git archive abc1234 checkpoints/photo"):
        tiny_codec(seed=1).decompress(data)


def test_bad_quality_and_non_codec_models_get_clear_errors(codec, scenes, tmp_path):
    with pytest.raises(HVAEError, match="quality must be an integer from 1 to 8"):
        codec.compress(scenes[:1], quality=9)
    HVAEPipeline(autoencoder=tiny_autoencoder(), hvae=tiny_hvae()).save_pretrained(
        tmp_path / "edit"
    )
    with pytest.raises(HVAEError, match="not an entropy model"):
        HVAECompressionPipeline.from_pretrained(tmp_path / "edit")


@pytest.fixture
def photo_folder(tmp_path, scenes):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i, scene in enumerate(scenes[:3]):
        scene.save(folder / ("sub" if i == 2 else "") / f"s{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_cli_compress_info_decompress(codec_dir, photo_folder, tmp_path, capsys):
    archive = tmp_path / "out.hvz"
    code = main(
        [
            "compress",
            str(photo_folder),
            "-o",
            str(archive),
            "--quality",
            "3",
            "--model",
            str(codec_dir),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and "broken.png" in captured.err  # skipped, reported, non-zero exit
    assert "3 images" in captured.out
    assert main(["info", str(archive), "--json"]) == 0
    info = __import__("json").loads(capsys.readouterr().out)
    assert sorted(i["name"] for i in info["images"]) == ["s0.png", "s1.png", "sub/s2.png"]
    assert info["total_bytes"] == archive.stat().st_size and info["bpp"] > 0
    out = tmp_path / "decoded"
    assert main(["decompress", str(archive), "-o", str(out), "--model", str(codec_dir)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "s0.png",
        "s1.png",
        "sub/s2.png",
    ]
    assert (
        Image.open(out / "sub" / "s2.png").size == Image.open(photo_folder / "sub" / "s2.png").size
    )
    only = tmp_path / "only"
    assert (
        main(
            [
                "decompress",
                str(archive),
                "-o",
                str(only),
                "--only",
                "s1.png",
                "--model",
                str(codec_dir),
            ]
        )
        == 0
    )
    assert [p.name for p in only.rglob("*.png")] == ["s1.png"]


def test_cli_decompress_survives_damage_and_truncation(codec_dir, photo_folder, tmp_path, capsys):
    archive = tmp_path / "out.hvz"
    main(["compress", str(photo_folder), "-o", str(archive), "--model", str(codec_dir)])
    reader = ArchiveReader(archive)
    offset, size = reader.entries[1]
    damaged = tmp_path / "damaged.hvz"
    data = bytearray(archive.read_bytes())
    data[offset + size - 20] ^= 0x01
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    out = tmp_path / "d1"
    assert main(["decompress", str(damaged), "-o", str(out), "--model", str(codec_dir)]) == 1
    err = capsys.readouterr().err
    assert "s1.png" in err and "checksum" in err
    assert sorted(p.name for p in out.rglob("*.png")) == ["s0.png", "s2.png"]

    truncated = tmp_path / "truncated.hvz"
    truncated.write_bytes(archive.read_bytes()[: reader.entries[2][0] + 30])
    out = tmp_path / "d2"
    assert main(["decompress", str(truncated), "-o", str(out), "--model", str(codec_dir)]) == 1
    assert sorted(p.name for p in out.rglob("*.png")) == ["s0.png", "s1.png"]
    assert "no valid index" in capsys.readouterr().err


def test_cli_decompress_with_another_model_names_both(codec_dir, photo_folder, tmp_path, capsys):
    archive = tmp_path / "out.hvz"
    main(["compress", str(photo_folder), "-o", str(archive), "--model", str(codec_dir)])
    other = tmp_path / "other"
    tiny_codec(seed=2).save_pretrained(other)
    capsys.readouterr()
    assert main(["decompress", str(archive), "-o", str(tmp_path / "x"), "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert ArchiveReader(archive).fingerprint in err and "this model is" in err


@pytest.mark.parametrize("version", [1, 2])
def test_whole_image_archives_of_versions_1_and_2_still_decode(
    codec, scenes, tmp_path, monkeypatch, version
):
    """Archives written before tiles (format 1: float32 entropy model; 2: float64) decode as
    they did, through every decoding path, each with its own arithmetic."""
    image = scenes[0]
    step = STEP.unpack(STEP.pack(quality_step(3)))[0]
    with torch.no_grad():
        features = codec.features_of(image)
        chunks, rebuilt = encode_symbols(codec.coding_model(version), features, step)
    payload = STEP.pack(step) + pack(chunks)  # one stream for the whole image
    buffer = io.BytesIO()
    with ArchiveWriter(buffer, codec.fingerprint(), version=version) as writer:
        writer.add(Record("old", image.height, image.width, 3, payload))
    assert ArchiveReader(buffer.getvalue()).version == version
    expected = codec.stage1.decode(rebuilt, (image.height, image.width))
    (decoded,) = codec.decompress(buffer.getvalue())
    assert np.array_equal(np.asarray(decoded), np.asarray(to_pil(expected)[0]))
    assert ArchiveReader(codec.compress([image])).version == 3
    assert codec.coding_model(2).dtype == torch.float64 and codec.coding_model(1) is codec.hvae
    with pytest.raises(HVAEError, match="format version 4"):
        codec.coding_model(4)
    # A whole-image payload is not a tiled one: read as version 3, it is refused.
    with pytest.raises(DamagedRecord, match="tile"):
        codec.decode_image(payload, (image.height, image.width), version=3)

    versions = []
    coding_model = codec.coding_model
    monkeypatch.setattr(codec, "coding_model", lambda v=3: versions.append(v) or coding_model(v))
    codec.decompress(buffer.getvalue())
    archive = tmp_path / "old.hvz"
    archive.write_bytes(buffer.getvalue())
    summary = codec.decompress_archive(archive, tmp_path / "out", progress=False)
    assert len(summary.written) == 1 and versions == [version, version]


def test_an_archive_written_by_format_2_decodes_bit_for_bit_as_it_did():
    """tests/data/archives/v2-photo.hvz: a 100x70 crop of tests/data/photos/wood.png that the
    bundled photo codec wrote at commit 1bd37cc (format 2), and the sha256 of the pixels
    that commit decoded it to."""
    pipe = HVAECompressionPipeline.from_pretrained(BUNDLED_PHOTO)
    data = (Path(__file__).parent / "data" / "archives" / "v2-photo.hvz").read_bytes()
    assert ArchiveReader(data).version == 2
    (decoded,) = pipe.decompress(data)
    assert decoded.size == (100, 70)
    assert hashlib.sha256(decoded.tobytes()).hexdigest() == (
        "50665dc225f744846b7a5e4efe13ff5db143fc82f48cee9e424b577f8c99b01c"
    )


# ---------------------------------------------------------------- hardening
def test_colliding_names_are_renamed_and_existing_outputs_refused_before_work(
    codec, scenes, tmp_path, monkeypatch
):
    names = ["a.jpg", "a.png", "A.PNG", "d/x.png"]
    archive = tmp_path / "names.hvz"
    archive.write_bytes(codec.compress(scenes, quality=2, names=names, refine_steps=0))
    out = tmp_path / "out"
    summary = codec.decompress_archive(archive, out, progress=False)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "A-3.png",
        "a-2.png",
        "a.png",
        "d/x.png",
    ]
    assert summary.renamed == ["a.png -> a-2.png", "A.PNG -> A-3.png"]
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (out / "d" / "x.png").unlink()
    (out / "d" / "x.png").symlink_to(victim)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before refusing")

    with monkeypatch.context() as patch:
        patch.setattr(codec, "decode_image", no_decoding)
        with pytest.raises(HVAEError, match="4 of the outputs exist already"):
            codec.decompress_archive(archive, out, progress=False)
    summary = codec.decompress_archive(archive, out, progress=False, overwrite=True)
    assert len(summary.written) == 4 and victim.read_bytes() == b"keep me"
    assert not (out / "d" / "x.png").is_symlink()


def test_exact_duplicate_names_in_a_crafted_archive_do_not_overwrite(codec, scenes, tmp_path):
    from tests.test_archive import crafted_archive

    body = Record("same", scenes[0].height, scenes[0].width, 3, codec.encode_image(scenes[0], 3))
    archive = tmp_path / "dup.hvz"
    archive.write_bytes(
        crafted_archive([body.encode()] * 2, fingerprint=codec.fingerprint().encode())
    )
    summary = codec.decompress_archive(archive, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["same-2.png", "same.png"]
    assert summary.renamed == ["same -> same-2.png"]


def test_declared_sizes_are_checked_at_the_models_padding_before_decoding(codec, scenes):
    payload = codec.encode_image(scenes[0], 3, refine_steps=0)
    started = time.perf_counter()
    # 8001 rows pad to 8032 at the tiny codec's multiple of 32: 64.3 MP, over the limit.
    with pytest.raises(DamagedRecord, match=r"8000x8001 \(padded to 8000x8032\).*over the limit"):
        codec.decode_image(payload, (8001, 8000))
    assert time.perf_counter() - started < 1


def test_a_stream_cut_short_or_too_long_is_a_damaged_record(codec, scenes):
    image = scenes[0]
    with small_tiles(codec, 4):
        payload = codec.encode_image(image, 3, refine_steps=0)
    size = (image.height, image.width)
    step, coded = split_payload(payload)
    side, streams = split_tiles(coded)
    with pytest.raises(DamagedRecord, match="ends before its tile side"):
        codec.decode_image(payload[:4], size)
    with pytest.raises(DamagedRecord, match="tile 9: a stream of"):
        codec.decode_image(payload[:-4], size)  # the last tile's length runs past the end

    def with_streams(streams):
        return STEP.pack(step) + join_tiles(side, streams)

    cut = [*streams[:4], streams[4][:4], *streams[5:]]
    with pytest.raises(DamagedRecord, match="tile 5 of 9: the bitstream ended before"):
        codec.decode_image(with_streams(cut), size)
    longer = [*streams[:8], streams[8] + streams[0]]
    with pytest.raises(DamagedRecord, match="tile 9 of 9: the bitstream goes on after"):
        codec.decode_image(with_streams(longer), size)


def test_a_record_without_the_tiles_its_size_needs_is_refused_before_decoding(
    codec, scenes, monkeypatch
):
    """A tiny record declaring 8000x8000 used to be decoded at full size until its stream ran
    out (10-16 s under load in the fuzz benchmark); the tile count now refuses it at once."""
    image = scenes[0]
    payload = codec.encode_image(image, 3, refine_steps=0)
    monkeypatch.setattr("hvae.entropy.decode_symbols", lambda *a: pytest.fail("decoded"))
    started = time.perf_counter()
    with pytest.raises(
        DamagedRecord, match="1 tiles of 64 cells, where 1000x1000 features need 256"
    ):
        codec.decode_image(payload, (8000, 8000))
    assert time.perf_counter() - started < 0.5
    step, coded = split_payload(payload)
    _, streams = split_tiles(coded)
    with pytest.raises(DamagedRecord, match="tile side 6 is not a multiple of this model's 4"):
        codec.decode_image(STEP.pack(step) + join_tiles(6, streams), size=(image.height, 90))


@pytest.fixture
def three_photos(tmp_path, scenes):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, scene in enumerate(scenes[:3]):
        scene.save(folder / f"p{i}.png")
    return folder


def test_compress_refuses_an_existing_output_and_writes_nothing_when_all_fail(
    codec, three_photos, tmp_path, monkeypatch
):
    out = tmp_path / "x.hvz"
    out.write_bytes(b"old")
    with monkeypatch.context() as patch:
        patch.setattr(codec, "encode_image", lambda *a, **k: pytest.fail("encoded first"))
        with pytest.raises(HVAEError, match="exists already"):
            codec.compress_files([str(three_photos)], out, progress=False)
    summary = codec.compress_files(
        [str(three_photos)], out, progress=False, refine_steps=0, overwrite=True
    )
    assert summary.images == 3 and len(ArchiveReader(out)) == 3

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(HVAEError, match="none of the inputs could be compressed.*a.png"):
        codec.compress_files([str(broken)], tmp_path / "none.hvz", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("none")) == []


def test_oversized_and_unnameable_inputs_are_skipped_not_fatal(
    codec, scenes, tmp_path, monkeypatch
):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, size in (("small.png", (30, 30)), ("wide.png", (40, 30)), ("bad\x1b.png", (8, 8))):
        scenes[0].resize(size).save(folder / name)
    # At the tiny codec's multiple of 32, small pads to 32x32 (1024) and wide to 64x32 (2048).
    monkeypatch.setattr("hvae.safe_io.MAX_PIXELS", 1500)
    summary = codec.compress_files(
        [str(folder)], tmp_path / "s.hvz", progress=False, refine_steps=0
    )
    assert summary.images == 1 and len(summary.skipped) == 2
    assert any("wide.png: 40x30 (padded to 64x32)" in s for s in summary.skipped)
    assert any("bad\\x1b.png" in s and "control character" in s for s in summary.skipped)


def test_an_interrupted_compress_keeps_its_records_and_a_rerun_finishes_it(
    codec, three_photos, tmp_path
):
    def terminated_after_two(job, items):
        for i, item in enumerate(items):
            if i == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler interrupts this
            yield from job.compute(codec, [item])

    out = tmp_path / "k.hvz"
    arguments = {"progress": False, "refine_steps": 0, "quality": 3}
    with pytest.raises(KeyboardInterrupt):
        codec.compress_files([str(three_photos)], out, compute=terminated_after_two, **arguments)
    partial = tmp_path / "k.hvz.partial"
    assert len(ArchiveReader(partial)) == 2 and not out.exists()
    size = partial.stat().st_size
    with pytest.raises(HVAEError, match="interrupted run with other inputs or quality"):
        codec.compress_files([str(three_photos)], out, **(arguments | {"quality": 4}))
    assert partial.stat().st_size == size  # refused, not truncated
    summary = codec.compress_files([str(three_photos)], out, **arguments)
    assert (summary.resumed, summary.images) == (2, 3) and not partial.exists()
    fresh = tmp_path / "fresh.hvz"
    assert summary.bytes == codec.compress_files([str(three_photos)], fresh, **arguments).bytes
    assert out.read_bytes() == fresh.read_bytes()


def test_transparent_pixels_are_composited_onto_white_with_a_warning(codec, scenes, tmp_path):
    rgba = scenes[0].convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0))  # fully transparent
    flat = as_rgb(rgba)
    assert flat.getextrema() == ((255, 255), (255, 255), (255, 255))
    assert flat.info.get(FLATTENED_ALPHA) and not as_rgb(scenes[0].convert("RGBA")).info
    folder = tmp_path / "alpha"
    folder.mkdir()
    rgba.save(folder / "clear.png")
    scenes[1].convert("RGBA").save(folder / "opaque.png")
    summary = codec.compress_files([str(folder)], tmp_path / "a.hvz", progress=False)
    assert summary.warnings == [
        f"{folder / 'clear.png'}: transparent pixels were composited onto white"
    ]


def test_outputs_in_each_others_way_are_reported_not_fatal(codec, scenes, tmp_path):
    """Was FileExistsError / IsADirectoryError, ending the whole run."""
    names = ["x", "x.png/y", "z", "w"]
    archive = tmp_path / "way.hvz"
    archive.write_bytes(codec.compress(scenes, quality=2, names=names, refine_steps=0))
    out = tmp_path / "out"
    (out / "z.png").mkdir(parents=True)  # a folder where an image goes
    summary = codec.decompress_archive(archive, out, progress=False, overwrite=True)
    assert sorted(p.name for p in out.rglob("*.png") if p.is_file()) == ["w.png", "x.png"]
    assert any(m.startswith("x.png/y: ") and "another image's output" in m for m in summary.damaged)
    assert any(m.startswith("z: cannot write") for m in summary.damaged)


def test_a_tile_is_scored_on_its_own_pixels_decoded_among_its_neighbours(codec):
    """refine_tile's cost decodes the tile within stage 1's features around it, so at a fine
    step its pixels are the whole image's decode of them; decoded alone they would not be."""
    image = ShapesDataset(1, seed=9, size=256)[0][0].crop((0, 0, 256, 200))  # 32x25 features
    halo = codec.stage1.decode_halo
    assert halo == codec.autoencoder.receptive_field[1]
    # Tile rows 8-16 and columns 16-32 (the last, into the padding): pixels 64-128, 128-256.
    with torch.no_grad():
        features = codec.features_of(image)
        whole = codec.stage1.decode(features)[..., 64:128, 128:256]
    target = to_tensor([image.crop((128, 64, 256, 128))])
    surround = features[..., 8 - halo : 16 + halo, 16 - halo :]
    own = features[..., 8:16, 16:32]
    assert 0 < surround.shape[-2] < features.shape[-2]  # a part of the image, not all of it
    step = 0.01  # rounding moves the features by at most half of it (no symbol is clamped)

    def mse(context):
        return rd_cost(codec.stage1, codec.hvae, own, target, step, False, context=context)[1]

    expected = float(((whole - target) ** 2).mean() * (255 / 2) ** 2)
    assert mse((surround, (halo, halo))) == pytest.approx(expected, rel=2e-4)
    assert mse(None) != pytest.approx(expected, rel=1e-3)  # decoded alone, its edges differ
