"""Gradio editor for the bundled pipelines: an Edit tab with one slider per direction, and a Generate tab.

Run it with ``hvae ui`` (or ``python -m ui.app``). Every pipeline is loaded once
per server. An upload is encoded once; its codes stay in the session's
``gr.State``, so a slider release runs only the decode path. The app reads no
server path a user names: images arrive as uploads that Gradio stores itself,
and pass through the same checked loader as the CLI (pixel limit, readable
errors). The queue runs two events at a time.
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import gradio as gr
from PIL import Image

from hvae.data.images import load_image
from hvae.errors import HVAEError

MAX_SLIDERS = 16
UPLOAD_MAX_PIXELS = 16_000_000  # a UI upload larger than this is refused before decoding
CONCURRENCY = 2  # two CPU-bound events at a time; more only slows each down on a small CPU
MAX_GENERATE = 32


def bundled_models() -> dict[str, str]:
    root = Path(__file__).resolve().parents[1] / "checkpoints"
    names = {"scenes": root / "shapes", "photos": root / "photo"}
    return {name: str(path) for name, path in names.items() if (path / "model_index.json").exists()}


@lru_cache(maxsize=4)
def pipeline(path: str):
    from pipelines import HVAEPipeline

    pipe = HVAEPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def slider_updates(pipe) -> list:
    names = pipe.directions[:MAX_SLIDERS]
    updates = [gr.update(visible=True, label=name, value=0.0) for name in names]
    return updates + [gr.update(visible=False, value=0.0)] * (MAX_SLIDERS - len(names))


def encode_upload(models: dict[str, str], model: str, path: str | None):
    """Upload -> (codes kept in the session, the image as uploaded, the unedited decode)."""
    if not path:
        raise gr.Error("upload an image first")
    try:
        image = load_image(path, max_pixels=UPLOAD_MAX_PIXELS)
    except HVAEError as error:
        # The message names Gradio's temporary copy; say what is wrong, not where it lies.
        raise gr.Error(str(error).split(": ", 1)[-1]) from None
    pipe = pipeline(models[model])
    try:
        codes = pipe.encode([image])
    except HVAEError as error:
        raise gr.Error(str(error)) from None
    return codes, image, pipe.decode(codes)[0]


def apply_edits(models: dict[str, str], model: str, codes, *strengths: float) -> Image.Image:
    if codes is None:
        raise gr.Error("upload an image first")
    pipe = pipeline(models[model])
    edits = {
        name: float(s)
        for name, s in zip(pipe.directions[:MAX_SLIDERS], strengths, strict=False)
        if s
    }
    return pipe.decode(pipe.edit(codes, edits) if edits else codes)[0]


def generate(models: dict[str, str], model: str, seed: float, temperature: float, count: float):
    count = int(count)
    if not 1 <= count <= MAX_GENERATE:
        raise gr.Error(f"count must be between 1 and {MAX_GENERATE}")
    images = pipeline(models[model]).sample(count, temperature=float(temperature), seed=int(seed))
    folder = Path(tempfile.mkdtemp(prefix="hvae-generate-"))
    archive = folder / f"samples_seed{int(seed)}_t{float(temperature):g}.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for i, image in enumerate(images):
            path = folder / f"sample_{i:03d}.png"
            image.save(path)
            zipped.write(path, path.name)
    return images, str(archive)


def build_app(models: dict[str, str] | None = None) -> gr.Blocks:
    models = models or bundled_models()
    if not models:
        raise HVAEError("no pipeline to serve: checkpoints/ has none and --model gave none")
    first = next(iter(models))
    directions = pipeline(models[first]).directions[:MAX_SLIDERS]

    with gr.Blocks(title="hvae editor") as app:
        gr.Markdown("# Hierarchical-VAE editor\nUpload an image, then move the sliders.")
        model = gr.Dropdown(list(models), value=first, label="pipeline")
        with gr.Tab("Edit"):
            codes = gr.State(None)
            with gr.Row():
                # A file input, not gr.Image: Gradio would decode an image before any check of
                # ours ran; this way the pixel limit applies first and errors read plainly.
                upload = gr.File(
                    label="input image", file_types=["image"], type="filepath", elem_id="upload"
                )
                before = gr.Image(type="pil", label="before (as uploaded)", interactive=False)
                after = gr.Image(
                    type="pil", label="after", interactive=False, format="png", elem_id="after"
                )
            sliders = [
                gr.Slider(
                    -3,
                    3,
                    value=0.0,
                    step=0.1,
                    label=directions[i] if i < len(directions) else None,
                    visible=i < len(directions),
                    elem_id=f"slider-{i}",
                )
                for i in range(MAX_SLIDERS)
            ]
            reset = gr.Button("reset")
        with gr.Tab("Generate"):
            with gr.Row():
                seed = gr.Number(0, label="seed", precision=0)
                temperature = gr.Slider(0.0, 1.5, value=0.8, step=0.05, label="temperature")
                count = gr.Slider(1, MAX_GENERATE, value=8, step=1, label="count")
            run = gr.Button("generate")
            gallery = gr.Gallery(label="samples", columns=8)
            archive = gr.File(label="download all (zip)")

        def on_upload(name, path):
            state, original, decoded = encode_upload(models, name, path)
            return [state, original, decoded] + [gr.update(value=0.0)] * MAX_SLIDERS

        upload.upload(
            on_upload,
            [model, upload],
            [codes, before, after, *sliders],
            api_name="encode",
        )
        for slider in sliders:
            slider.release(
                lambda name, state, *s: apply_edits(models, name, state, *s),
                [model, codes, *sliders],
                after,
                api_name="edit" if slider is sliders[0] else False,
            )
        reset.click(
            lambda name, state: (
                [apply_edits(models, name, state)] + [gr.update(value=0.0)] * MAX_SLIDERS
            ),
            [model, codes],
            [after, *sliders],
            api_name="reset",
        )
        model.change(
            lambda name: [None, None, None] + slider_updates(pipeline(models[name])),
            [model],
            [codes, before, after, *sliders],
            api_name="switch",
        )
        run.click(
            lambda name, s, t, n: generate(models, name, s, t, n),
            [model, seed, temperature, count],
            [gallery, archive],
            api_name="generate",
        )
    app.queue(default_concurrency_limit=CONCURRENCY, max_size=64)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the hvae Gradio editor.")
    parser.add_argument("--model", action="append", help="pipeline folder; repeatable")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    models = {Path(m).name: m for m in args.model} if args.model else None
    build_app(models).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
