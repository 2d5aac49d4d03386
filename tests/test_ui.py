"""The Gradio editor, driven through gradio_client against a launched app, endpoint by endpoint."""

import socket
import zipfile

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from hvae.data.shapes import ShapesDataset  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def client(tiny_pipeline_dir):
    from ui.app import MAX_SLIDERS, build_app

    app = build_app({"tiny": str(tiny_pipeline_dir)})
    port = free_port()
    app.launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=port,
        quiet=True,
        show_error=True,
    )
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False), MAX_SLIDERS
    finally:
        app.close()


def test_every_endpoint_answers(client, tmp_path):
    from PIL import Image

    client, sliders = client
    assert {"/encode", "/edit", "/reset", "/switch", "/generate"} <= set(
        client.view_api(return_format="dict")["named_endpoints"]
    )
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

    gallery, archive = client.predict("tiny", 5, 0.8, 3, api_name="/generate")
    assert len(gallery) == 3
    with zipfile.ZipFile(archive) as zipped:
        assert sorted(zipped.namelist()) == [f"sample_{i:03d}.png" for i in range(3)]

    switched = client.predict("tiny", api_name="/switch")
    assert switched[0] is None and switched[1] is None  # images cleared for the new model


def test_bad_uploads_get_readable_messages(client, tmp_path):
    client, _ = client
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(Exception, match="not an image"):
        client.predict("tiny", gradio_client.handle_file(str(text)), api_name="/encode")
    with pytest.raises(Exception, match="upload an image first"):
        client.predict("tiny", *[1.0] * 16, api_name="/edit")
