"""The Gradio editor, driven through gradio_client against a launched app, endpoint by endpoint."""

import contextlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from hvae.data.shapes import ShapesDataset  # noqa: E402
from ui.screenshots import free_port  # noqa: E402


@contextlib.contextmanager
def launched(models):
    """The app on ``models``, launched as ``hvae ui`` launches it, and a client of it."""
    from ui.app import build_app

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
        yield app, gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()


@pytest.fixture
def client(tiny_pipeline_dir, tmp_path):
    from hvae.cli import main
    from tests.conftest import tiny_codec
    from ui.app import MAX_SLIDERS

    # "bare" has no fitted sampling prior, like the bundled photo-edit.
    shutil.copytree(tiny_pipeline_dir, tmp_path / "bare")
    fit = ["prior", "fit", "--scenes", "100", "--mixtures", "2", "--components", "4"]
    assert main([*fit, "--model", str(tiny_pipeline_dir)]) == 0
    codec_dir = tmp_path / "codec"
    tiny_codec().save_pretrained(codec_dir)
    models = {
        "tiny": str(tiny_pipeline_dir),
        "bare": str(tmp_path / "bare"),
        "codec": str(codec_dir),
    }
    with launched(models) as (_, client):
        yield client, MAX_SLIDERS, models


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

    monkeypatch.setattr(app, "SCRATCH_KEPT", 2)
    image = Image.new("RGB", (8, 8), (10, 200, 30))
    first, second, third = (app.served_png(image) for _ in range(3))
    assert len({first, second, third}) == 3
    assert not Path(first).exists()  # only the last SCRATCH_KEPT stay
    for path in (second, third):
        with Image.open(path) as served:
            assert served.convert("RGB").tobytes() == image.tobytes()
    # Galleries and captioned pairs are served at any depth; other outputs pass as they are.
    codes, rows = object(), [["a.png", 1.5]]
    outputs = app.served((codes, [image, (image, "caption")], rows))
    assert outputs[0] is codes and outputs[2] == rows
    assert all(Path(p).is_file() for p in (outputs[1][0], outputs[1][1][0]))
    assert outputs[1][1][1] == "caption"


def test_the_model_menu_uses_the_cli_names():
    from hvae.loading import resolve_model
    from ui.app import bundled_models

    models = bundled_models()
    assert set(models) == {"shapes", "photo-edit", "photo"}  # all three ship with the checkout
    for name, path in models.items():
        assert resolve_model(name, "codec" if name == "photo" else "pipeline") == path


def test_generate_refuses_the_own_prior_of_a_pipeline_without_a_fitted_one(client):
    client, sliders, _ = client
    with pytest.raises(Exception, match='no fitted sampling prior.*pick "the model\'s own prior"'):
        client.predict("bare", 5, 0.8, 2, "auto", api_name="/generate")
    gallery, _ = client.predict("bare", 5, 0.8, 2, "model", api_name="/generate")
    assert len(gallery) == 2  # asked for explicitly, it samples
    # Switching to it says so in the Generate tab; switching back clears the note.
    assert "no fitted sampling prior" in client.predict("bare", api_name="/switch")[-1]
    assert client.predict("tiny", api_name="/switch")[-1] == ""


def thin_png(path: Path, width: int, height: int) -> Path:
    from PIL import Image

    Image.new("RGB", (width, height), (120, 80, 40)).save(path)
    return path


def test_thin_or_padded_too_large_uploads_are_refused_before_decoding(
    client, tmp_path, monkeypatch
):
    from ui import app

    client, _, _ = client
    thin = thin_png(tmp_path / "thin.png", 4_000_000, 1)
    assert thin.stat().st_size < 20_000  # a few KB on disk, 12 MB once decoded
    upload = gradio_client.handle_file(str(thin))
    # Padded to the model's multiple, one row becomes 16 or more: 64 M pixels and up.
    refused = r"thin.png: 4000000x1 \(padded to 4000000x\d+\) pixels is over the limit"
    with pytest.raises(Exception, match=refused):
        client.predict("tiny", upload, api_name="/encode")
    with pytest.raises(Exception, match=refused):
        client.predict([upload], 4, api_name="/compress")
    sliver = gradio_client.handle_file(str(thin_png(tmp_path / "sliver.png", 16_384, 16)))
    with pytest.raises(Exception, match="sliver.png: 16384x16 is more than 256 times longer"):
        client.predict("tiny", sliver, api_name="/encode")
    # The pixel limit applies to the size padded to the model's multiple (16 for the tiny
    # pipeline): 65x60 holds 3,900 pixels, padded to 80x64 it holds 5,120.
    monkeypatch.setattr(app, "UPLOAD_MAX_PIXELS", 64 * 64)
    small = gradio_client.handle_file(str(thin_png(tmp_path / "small.png", 65, 60)))
    with pytest.raises(
        Exception, match=r"65x60 \(padded to 80x64\) pixels is over the limit of 4096"
    ):
        client.predict("tiny", small, api_name="/encode")
    # And the server is still up.
    square = gradio_client.handle_file(str(thin_png(tmp_path / "square.png", 64, 64)))
    assert Path(client.predict("tiny", square, api_name="/encode")[0]).is_file()


def test_upload_files_over_the_size_limit_are_refused(tiny_pipeline_dir, tmp_path, monkeypatch):
    from ui import app

    big = thin_png(tmp_path / "big.png", 64, 64)
    big.write_bytes(big.read_bytes() + bytes(5000))  # trailing bytes Pillow ignores
    monkeypatch.setattr(app, "MAX_UPLOAD_BYTES", 4000)
    # Gradio refuses it as it arrives: the limit is set on launch, whoever launches the app.
    with launched({"tiny": str(tiny_pipeline_dir)}) as (served, client):
        assert served.max_file_size == 4000
        with pytest.raises(Exception, match="(?i)file size"):
            client.predict("tiny", gradio_client.handle_file(str(big)), api_name="/encode")
    # The handlers check again, for a server launched without the limit.
    with pytest.raises(gr.Error, match="big.png: 5,[0-9]{3} bytes, over the upload limit of 4,000"):
        app.encode_upload({"tiny": str(tiny_pipeline_dir)}, "tiny", str(big))


def test_the_app_removes_its_files_at_exit(tmp_path):
    script = (
        "from PIL import Image\n"
        "from ui.app import scratch_root, served_png, zip_images\n"
        "image = Image.new('RGB', (8, 8))\n"
        "served_png(image)\n"
        "zip_images([image], ['a'], 'a.zip')\n"
        "print(scratch_root())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    root = Path(done.stdout.strip().splitlines()[-1])
    assert root.name.startswith("hvae-ui-") and not root.exists()


def test_each_slider_spans_exactly_its_directions_range(tiny_pipeline_dir):
    import json

    from ui.app import MAX_SLIDERS, build_app, slider_settings, slider_step

    path = tiny_pipeline_dir / "directions" / "directions.json"
    saved = json.loads(path.read_text())
    saved["brighter"]["range"] = [-0.5, 1.25]
    path.write_text(json.dumps(saved))
    models = {"tiny": str(tiny_pipeline_dir)}
    settings = slider_settings(models, "tiny")
    assert len(settings) == MAX_SLIDERS
    assert settings[0] == {
        "visible": True,
        "label": "brighter",
        "minimum": -0.5,
        "maximum": 1.25,
        "step": 0.05,
    }
    assert not any(s["visible"] for s in settings[1:])
    shown = {b.elem_id: b for b in build_app(models).blocks.values() if b.elem_id}
    assert (shown["slider-0"].minimum, shown["slider-0"].maximum) == (-0.5, 1.25)
    # A slider's values are its minimum plus whole steps: 0 must be one of them.
    for low in (-1.33, -0.5, -3.0, 0.0):
        steps = -low / slider_step(low)
        assert abs(steps - round(steps)) < 1e-9 and 0.04 < slider_step(low) <= 0.05


def test_the_edit_endpoint_refuses_strengths_outside_the_selected_models_range(client, tmp_path):
    import json

    from PIL import Image

    client, sliders, models = client
    path = Path(models["bare"]) / "directions" / "directions.json"
    saved = json.loads(path.read_text())
    saved["brighter"]["range"] = [-0.5, 1.25]
    path.write_text(json.dumps(saved))
    scene = gradio_client.handle_file(str(thin_png(tmp_path / "scene.png", 64, 64)))
    rest = [0.0] * (sliders - 1)
    client.predict("tiny", scene, api_name="/encode")
    assert Path(client.predict("tiny", 2.0, *rest, api_name="/edit")).is_file()
    # The sliders follow the model: "bare" ends its brighter slider at 1.25.
    client.predict("bare", api_name="/switch")
    client.predict("bare", scene, api_name="/encode")
    with pytest.raises(Exception, match="greater than maximum value 1.25"):
        client.predict("bare", 2.0, *rest, api_name="/edit")
    assert Path(client.predict("bare", 1.25, *rest, api_name="/edit")).is_file()
    # Past the sliders (a caller of apply_edits), the pipeline's own check answers.
    from ui.app import apply_edits, encode_image

    codes, _, _ = encode_image(models, "bare", Image.new("RGB", (64, 64)))
    with pytest.raises(gr.Error, match="'brighter' takes strengths from -0.5 to 1.25"):
        apply_edits(models, "bare", codes, 2.0)
