"""The Gradio editor, driven through gradio_client against a launched app, endpoint by endpoint."""

import zipfile
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from hvae.data.shapes import ShapesDataset  # noqa: E402
from ui.screenshots import free_port  # noqa: E402


@pytest.fixture
def client(tiny_pipeline_dir, tmp_path):
    from hvae.cli import main
    from tests.conftest import tiny_codec
    from ui.app import MAX_SLIDERS, build_app

    fit = ["prior", "fit", "--scenes", "100", "--mixtures", "2", "--components", "4"]
    assert main([*fit, "--model", str(tiny_pipeline_dir)]) == 0
    codec_dir = tmp_path / "codec"
    tiny_codec().save_pretrained(codec_dir)
    models = {"tiny": str(tiny_pipeline_dir), "codec": str(codec_dir)}
    app = build_app(models)
    port = free_port()
    app.launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=port,
        quiet=True,
        show_error=True,
    )
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False), MAX_SLIDERS, models
    finally:
        app.close()


def test_every_endpoint_answers(client, tmp_path):
    from PIL import Image

    client, sliders, models = client
    assert {
        "/encode",
        "/edit",
        "/reset",
        "/switch",
        "/generate",
        "/compress",
        "/decompress",
        "/sample",
        "/edit_generated",
    } <= set(client.view_api(return_format="dict")["named_endpoints"])
    scene = tmp_path / "scene.png"
    ShapesDataset(1, seed=3, size=64)[0][0].save(scene)

    encoded = client.predict("tiny", gradio_client.handle_file(str(scene)), api_name="/encode")
    # State is not part of the API: outputs are (before, after, *sliders).
    assert Image.open(encoded[0]).size == (64, 64)
    unedited = Image.open(encoded[1]).copy()
    assert unedited.size == (64, 64)

    # The tiny pipeline has one direction, "brighter": the first slider.
    moved = Image.open(client.predict("tiny", 2.0, *[0.0] * (sliders - 1), api_name="/edit"))
    assert moved.tobytes() != unedited.tobytes()
    back = client.predict("tiny", *[0.0] * sliders, api_name="/edit")
    assert Image.open(back).tobytes() == unedited.tobytes()
    reset = client.predict("tiny", api_name="/reset")
    assert Image.open(reset[0]).tobytes() == unedited.tobytes()

    gallery, archive = client.predict("tiny", 5, 0.8, 3, "auto", api_name="/generate")
    assert len(gallery) == 3
    with zipfile.ZipFile(archive) as zipped:
        assert sorted(zipped.namelist()) == [f"sample_{i:03d}.png" for i in range(3)]
    # The tiny model has a fitted prior (see the fixture): the model's own prior draws others.
    own, own_archive = client.predict("tiny", 5, 0.8, 3, "model", api_name="/generate")
    pixels = [Image.open(item["image"]).tobytes() for item in gallery]
    assert pixels != [Image.open(item["image"]).tobytes() for item in own]
    assert own_archive.endswith("_model-prior.zip")

    # The last generated image set goes to the Edit tab; so does one of the app's own samples.
    from_gallery = client.predict("tiny", 2, api_name="/edit_generated")
    assert Image.open(from_gallery[0]).tobytes() == Image.open(own[1]["image"]).tobytes()
    with pytest.raises(Exception, match="between 1 and 3"):
        client.predict("tiny", 9, api_name="/edit_generated")
    sample = client.predict("tiny", "photo: wood", api_name="/sample")
    assert Image.open(sample[0]).size == (256, 256)

    switched = client.predict("tiny", api_name="/switch")
    assert switched[0] is None and switched[1] is None  # images cleared for the new model


def test_bad_uploads_get_readable_messages(client, tmp_path):
    client, _, _ = client
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(Exception, match="not an image"):
        client.predict("tiny", gradio_client.handle_file(str(text)), api_name="/encode")
    with pytest.raises(Exception, match="upload an image first"):
        client.predict("tiny", *[1.0] * 16, api_name="/edit")


def test_compress_gives_an_archive_and_a_table_and_decompress_gives_the_images(client, tmp_path):
    from PIL import Image

    from hvae.codec import ArchiveReader
    from ui.app import COMPRESS_COLUMNS

    client, _, _ = client
    dataset = ShapesDataset(2, seed=4, size=176)
    paths = []
    for i, size in enumerate([(176, 176), (100, 72)]):
        path = tmp_path / f"photo{i}.png"
        dataset[i][0].resize(size).save(path)
        paths.append(path)
    archive, table, gallery = client.predict(
        [gradio_client.handle_file(str(p)) for p in paths], 3, api_name="/compress"
    )
    reader = ArchiveReader(archive)
    records = [record for _, record in reader.records()]
    assert [r.name for r in records] == ["photo0", "photo1"]
    assert [(r.width, r.height) for r in records] == [(176, 176), (100, 72)]
    assert table["headers"] == COMPRESS_COLUMNS
    rows = {row[0]: dict(zip(COMPRESS_COLUMNS, row, strict=True)) for row in table["data"]}
    for record in records:
        row = rows[record.name]
        assert row["bytes"] == len(record.payload)
        assert row["bpp"] == pytest.approx(
            8 * len(record.payload) / (record.width * record.height), 1e-3
        )
        # JPEG at the same size: never larger than ours unless even quality 1 is larger.
        assert row["JPEG bytes"] <= row["bytes"] or row["JPEG quality"] == 1
        assert 0 < row["PSNR (dB)"] < 100 and 0 < row["JPEG PSNR (dB)"] < 100
    assert 0 < rows["photo0"]["MS-SSIM"] <= 1
    assert rows["photo1"]["MS-SSIM"] is None  # under 176 pixels: MS-SSIM is undefined
    assert len(gallery) == 2

    decoded, zipped = client.predict(gradio_client.handle_file(archive), api_name="/decompress")
    assert [Image.open(item["image"]).size for item in decoded] == [(176, 176), (100, 72)]
    # What decompress shows is exactly what compress showed (the same decoder, bit for bit).
    for before, after in zip(gallery, decoded, strict=True):
        assert Image.open(before["image"]).tobytes() == Image.open(after["image"]).tobytes()
    with zipfile.ZipFile(zipped) as names:
        assert sorted(names.namelist()) == ["photo0.png", "photo1.png"]

    # A damaged record costs only itself: the other image still comes back.
    data = bytearray(reader.data)
    at = data.find(records[1].payload) + len(records[1].payload) // 2
    data[at] ^= 0xFF
    damaged = tmp_path / "damaged.hvz"
    damaged.write_bytes(bytes(data))
    decoded, _ = client.predict(gradio_client.handle_file(str(damaged)), api_name="/decompress")
    assert [Image.open(item["image"]).size for item in decoded] == [(176, 176)]


def test_codec_errors_are_readable(client, tmp_path):
    client, sliders, models = client
    not_archive = tmp_path / "notes.hvz"
    not_archive.write_bytes(b"just some text, not an archive")
    with pytest.raises(Exception, match="not an .hvz"):
        client.predict(gradio_client.handle_file(str(not_archive)), api_name="/decompress")
    with pytest.raises(Exception, match="upload one or more images"):
        client.predict([], 4, api_name="/compress")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    with pytest.raises(Exception, match="text.png: not an image"):
        client.predict([gradio_client.handle_file(str(text))], 4, api_name="/compress")
    scene = tmp_path / "scene.png"
    ShapesDataset(1, seed=3, size=64)[0][0].save(scene)
    # The codec is not among the pipeline choices (it serves the Compress tab only), and
    # asking it to edit says why it cannot.
    with pytest.raises(Exception):  # noqa: B017 (Gradio refuses a value outside the choices)
        client.predict("codec", gradio_client.handle_file(str(scene)), api_name="/encode")
    from ui.app import editor

    with pytest.raises(gr.Error, match="'codec' is a codec"):
        editor(models, "codec")


def test_served_images_get_files_of_their_own_and_old_ones_are_removed(monkeypatch):
    """Identical outputs must not share a file that a later request rewrites while an
    earlier client downloads it; files beyond the kept number are deleted."""
    from PIL import Image

    from ui import app

    monkeypatch.setattr(app, "SERVED_KEPT", 2)
    image = Image.new("RGB", (8, 8), (10, 200, 30))
    first, second, third = (app.served_png(image) for _ in range(3))
    assert len({first, second, third}) == 3
    assert not Path(first).exists()  # only the last SERVED_KEPT stay
    for path in (second, third):
        with Image.open(path) as served:
            assert served.convert("RGB").tobytes() == image.tobytes()
    # Galleries and captioned pairs are served at any depth; other outputs pass as they are.
    codes, rows = object(), [["a.png", 1.5]]
    outputs = app.served((codes, [image, (image, "caption")], rows))
    assert outputs[0] is codes and outputs[2] == rows
    assert all(Path(p).is_file() for p in (outputs[1][0], outputs[1][1][0]))
    assert outputs[1][1][1] == "caption"
