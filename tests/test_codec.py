"""Entropy coding and the compression pipeline, on tiny untrained models."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from hvae.cli import main
from hvae.codec import ArchiveReader, ArchiveWriter, Record
from hvae.data.images import to_pil
from hvae.data.shapes import ShapesDataset
from hvae.entropy import decode_symbols, encode_symbols, pack
from hvae.errors import HVAEError
from hvae.train_codec import make_codec_model
from pipelines import HVAECompressionPipeline, HVAEPipeline
from pipelines.compression_pipeline import _STEP, EARLIER_BUNDLED_PHOTO, quality_step
from tests.conftest import tiny_autoencoder, tiny_codec, tiny_hvae


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
    stream_bits = 8 * (len(payload) - 4)  # minus the stored step
    assert bits > 1000  # a meaningful stream, not a few words of coder state
    assert stream_bits <= 1.01 * bits


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


def test_version_1_archives_still_decode_in_float32(codec, scenes, tmp_path, monkeypatch):
    """Archives written before the float64 entropy model (format 1) decode as they did,
    through every decoding path, with the float32 model."""
    image = scenes[0]
    step = _STEP.unpack(_STEP.pack(quality_step(3)))[0]
    with torch.no_grad():
        features = codec.features_of(image)
        chunks, rebuilt = encode_symbols(codec.hvae, features, step)
    payload = _STEP.pack(step) + pack(chunks)
    buffer = io.BytesIO()
    with ArchiveWriter(buffer, codec.fingerprint(), version=1) as writer:
        writer.add(Record("old", image.height, image.width, 3, payload))
    reader = ArchiveReader(buffer.getvalue())
    assert reader.version == 1
    expected = codec.stage1.decode(rebuilt, (image.height, image.width))
    (decoded,) = codec.decompress(buffer.getvalue())
    assert np.array_equal(np.asarray(decoded), np.asarray(to_pil(expected)[0]))
    assert ArchiveReader(codec.compress([image])).version == 2
    assert codec.coding_model(2).dtype == torch.float64 and codec.coding_model(1) is codec.hvae
    with pytest.raises(HVAEError, match="format version 3"):
        codec.coding_model(3)

    versions = []
    coding_model = codec.coding_model
    monkeypatch.setattr(codec, "coding_model", lambda v=2: versions.append(v) or coding_model(v))
    codec.decompress(buffer.getvalue())
    archive = tmp_path / "old.hvz"
    archive.write_bytes(buffer.getvalue())
    summary = codec.decompress_archive(archive, tmp_path / "out", progress=False)
    assert len(summary.written) == 1 and versions == [1, 1]
