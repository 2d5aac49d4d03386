"""Gradio app for the bundled pipelines: Edit (one slider per direction), Generate and Compress tabs.

Run it with ``hvae ui`` (or ``python -m ui.app``). Every pipeline is loaded once
per server, with the class its folder names (an editing ``HVAEPipeline`` or an
``HVAECompressionPipeline`` codec). An upload is encoded once; its codes stay in
the session's ``gr.State``, so a slider release runs only the decode path. The
app reads no server path a user names: files arrive as uploads that Gradio
stores itself, and pass through the same checked loaders as the CLI (pixel
limit, readable errors). The queue runs two events at a time, and one
compression at a time.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import os
import shutil
import tempfile
import threading
import zipfile
from functools import lru_cache
from pathlib import Path

import gradio as gr
from PIL import Image

from hvae.codec import ArchiveError, ArchiveWriter, DamagedRecord, Record
from hvae.codec_settings import DEFAULT_QUALITY, DEFAULT_REFINE_STEPS, TUNINGS
from hvae.data.images import load_image, to_tensor
from hvae.errors import HVAEError
from hvae.loading import (
    CODEC_CLASS,
    bundled_names,
    bundled_path,
    check_worth_sampling,
    load_pipeline,
    pipeline_class,
)
from hvae.safe_io import check_image_size
from pipelines.compression_pipeline import QUALITY_STEPS

MAX_SLIDERS = 16
# An upload whose size, padded to the model's pixel multiple, is larger than this is refused
# before its pixels are decoded.
UPLOAD_MAX_PIXELS = 16_000_000
# Any one uploaded file: Gradio refuses larger ones as they arrive (see ``EditorApp``), and
# the handlers check again, for a server launched some other way. A 16 MP RGBA PNG stored
# uncompressed is 64 MB.
MAX_UPLOAD_BYTES = 100 * 2**20
# Gradio's own copies of uploads and outputs: every hour, those over an hour old are deleted
# (and all of them when the server stops).
GRADIO_CACHE_CLEANUP = (3600, 3600)
CONCURRENCY = 2  # two CPU-bound events at a time; more only slows each down on a small CPU
MAX_GENERATE = 32
OWN_PRIOR = "the model's own prior"  # the Generate tab's name for prior="model"
# Compression runs the codec at about 0.3 s per 256x256 image on 2 cores: one request
# may hold at most this many pixels, so nobody waits minutes behind another user.
COMPRESS_MAX_PIXELS = 8_000_000
MAX_COMPRESS_FILES = 32
MAX_ARCHIVE_BYTES = 64 * 2**20
SAMPLE_PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "photos"
COMPRESS_COLUMNS = [
    "image",
    "size",
    "bytes",
    "bpp",
    "PSNR (dB)",
    "MS-SSIM",
    "JPEG quality",
    "JPEG bytes",
    "JPEG bpp",
    "JPEG PSNR (dB)",
    "JPEG MS-SSIM",
]


class EditorApp(gr.Blocks):
    """The app's Blocks: whoever launches it (``hvae ui``, the tests, the screenshots), Gradio
    refuses uploads over ``MAX_UPLOAD_BYTES`` unless the launcher sets another limit."""

    def launch(self, *args, **kwargs):
        kwargs.setdefault("max_file_size", MAX_UPLOAD_BYTES)
        return super().launch(*args, **kwargs)


def bundled_models() -> dict[str, str]:
    """The installed bundled pipelines under the names the CLI gives them (``--model NAME``)."""
    paths = {name: bundled_path(name) for name in bundled_names()}
    return {name: str(p) for name, p in paths.items() if (p / "model_index.json").exists()}


@lru_cache(maxsize=4)
def pipeline(path: str):
    return load_pipeline(path, pipeline_class(path))


def editor(models: dict[str, str], model: str):
    """The selected pipeline if it can edit and sample; a codec cannot, and says so."""
    if pipeline_class(models[model]) == CODEC_CLASS:
        raise gr.Error(
            f"'{model}' is a codec: it compresses (Compress tab) but has no directions or "
            "sampler; pick an editing pipeline"
        )
    return pipeline(models[model])


def codec_name(models: dict[str, str]) -> str | None:
    """The first codec among the served pipelines: the Compress tab's model."""
    return next(
        (name for name, path in models.items() if pipeline_class(path) == CODEC_CLASS), None
    )


def _readable(error: Exception) -> str:
    # Messages name Gradio's temporary copy of an upload; say what is wrong, not where it lies.
    return str(error).split(": ", 1)[-1]


def zip_images(images: list[Image.Image], names: list[str], archive_name: str) -> str:
    """PNGs of ``images`` in a fresh scratch folder, zipped; returns the zip's path."""
    folder = scratch_folder()
    archive = folder / archive_name
    with zipfile.ZipFile(archive, "w") as zipped:
        for image, name in zip(images, names, strict=True):
            path = folder / f"{name}.png"
            image.save(path)
            zipped.write(path, path.name)
    return str(archive)


# Every file the app writes lies in one folder of its own, made on first use and removed when
# Python exits. Outputs are needed only until Gradio has copied them into its cache as the
# event ends, so only the most recent are kept.
_scratch: collections.deque[Path] = collections.deque()
_scratch_lock = threading.Lock()
SCRATCH_KEPT = 256


@lru_cache(maxsize=1)
def scratch_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="hvae-ui-"))


@atexit.register
def remove_scratch() -> None:
    """Delete the app's scratch folder and all in it; a later output makes a new one."""
    with _scratch_lock:
        if scratch_root.cache_info().currsize:
            shutil.rmtree(scratch_root(), ignore_errors=True)
            scratch_root.cache_clear()
        _scratch.clear()


def _new_scratch(make) -> Path:
    """A new file or folder, ``make(root)``, in the scratch folder; the oldest beyond
    ``SCRATCH_KEPT`` are deleted."""
    with _scratch_lock:
        path = Path(make(scratch_root()))
        _scratch.append(path)
        stale = [_scratch.popleft() for _ in range(max(0, len(_scratch) - SCRATCH_KEPT))]
    for old in stale:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return path


def scratch_folder() -> Path:
    return _new_scratch(lambda root: tempfile.mkdtemp(dir=root))


def served_png(image: Image.Image) -> str:
    """``image`` as a PNG file of its own, for an output component.

    Returning a PIL image makes Gradio write it to a path named by the hash of its bytes,
    truncating that file in place, so two requests that produce the same image (two users
    at the same slider value, or one moving a slider back) can truncate the file while the
    other's client is downloading it; the benchmark saw 'peer closed connection without
    sending complete message body'. Gradio copies a file path into its cache under a
    temporary name and renames it into place, so this path is never served half written."""

    def new_png(root: Path) -> str:
        with tempfile.NamedTemporaryFile(dir=root, suffix=".png", delete=False) as handle:
            return handle.name

    path = _new_scratch(new_png)
    image.save(path, format="PNG")
    return str(path)


def served(outputs):
    """Event outputs with every image in them, at any depth of lists and tuples (galleries,
    captioned pairs), replaced by its own PNG file (``served_png``); the rest as it is."""
    if isinstance(outputs, Image.Image):
        return served_png(outputs)
    if isinstance(outputs, list | tuple):
        return type(outputs)(served(item) for item in outputs)
    return outputs


def slider_step(low: float) -> float:
    """About 0.05, and a whole number of steps from ``low`` to 0: a slider's values are its
    minimum plus whole steps, and 0 (no edit) must be one of them."""
    return 0.05 if low == 0 else -low / max(1, round(-low / 0.05))


def slider_settings(models: dict[str, str], model: str) -> list[dict]:
    """The settings of every slider for ``model``: one per direction, at 0, spanning exactly
    the direction's strength range; the rest hidden."""
    is_codec = pipeline_class(models[model]) == CODEC_CLASS
    pipe = None if is_codec else pipeline(models[model])
    settings = []
    for name in [] if is_codec else pipe.directions[:MAX_SLIDERS]:
        low, high = pipe.strength_range(name)
        settings.append({"label": name, "minimum": low, "maximum": high, "step": slider_step(low)})
    hidden = {"label": None, "visible": False}
    return [{"visible": True, **s} for s in settings] + [hidden] * (MAX_SLIDERS - len(settings))


def slider_updates(models: dict[str, str], model: str) -> list:
    return [gr.update(value=0.0, **s) for s in slider_settings(models, model)]


def sample_images() -> dict[str, Image.Image]:
    """The pictures the Edit tab offers without an upload: held-out scenes and the two
    photo crops shipped with the tests (the app's own files, never a user's path)."""
    from hvae.data.shapes import ShapesDataset
    from hvae.demo import HELD_OUT_SEED

    scenes = ShapesDataset(3, seed=HELD_OUT_SEED, size=64)
    samples = {f"scene {i + 1}": scenes[i][0] for i in range(3)}
    for path in sorted(SAMPLE_PHOTOS.glob("*.png")):
        samples[f"photo: {path.stem}"] = load_image(path)
    return samples


def encode_image(models: dict[str, str], model: str, image: Image.Image):
    """An image -> (codes kept in the session, the image as given, the unedited decode)."""
    pipe = editor(models, model)
    side = pipe.edit_size
    if side is not None and image.size != (side, side):
        gr.Info(f"resized to {side}x{side}: this pipeline's sliders were fitted at that size")
        image = image.resize((side, side), Image.Resampling.LANCZOS)
    try:
        codes = pipe.encode([image])
    except HVAEError as error:
        raise gr.Error(str(error)) from None
    return codes, image, pipe.decode(codes)[0]


def load_upload(path: str, multiple: int) -> Image.Image:
    """An uploaded image file, refused with a ``gr.Error`` naming it before any pixel is
    decoded when the file is over ``MAX_UPLOAD_BYTES`` or its size, read from the header
    and padded to ``multiple`` (the model's pixel multiple), is over ``UPLOAD_MAX_PIXELS``
    or too thin (``check_image_size``)."""
    name = Path(path).name
    size = os.stat(path).st_size
    if size > MAX_UPLOAD_BYTES:
        raise gr.Error(f"{name}: {size:,} bytes, over the upload limit of {MAX_UPLOAD_BYTES:,}")
    try:
        return load_image(path, max_pixels=UPLOAD_MAX_PIXELS, multiple=multiple)
    except HVAEError as error:
        raise gr.Error(f"{name}: {_readable(error)}") from None


def encode_upload(models: dict[str, str], model: str, path: str | None):
    """Upload -> (codes kept in the session, the image as uploaded, the unedited decode)."""
    if not path:
        raise gr.Error("upload an image first")
    image = load_upload(path, editor(models, model).pixel_multiple)
    return encode_image(models, model, image)


def apply_edits(models: dict[str, str], model: str, codes, *strengths: float) -> Image.Image:
    if codes is None:
        raise gr.Error("upload an image first")
    pipe = editor(models, model)
    edits = {
        name: s for name, s in zip(pipe.directions[:MAX_SLIDERS], strengths, strict=False) if s
    }
    try:  # the sliders end at each range; a call to the API can go past them
        edited = pipe.edit(codes, edits) if edits else codes
    except HVAEError as error:
        raise gr.Error(str(error)) from None
    return pipe.decode(edited)[0]


def generate(
    models: dict[str, str],
    model: str,
    seed: float,
    temperature: float,
    count: float,
    prior: str = "auto",
):
    count = int(count)
    if not 1 <= count <= MAX_GENERATE:
        raise gr.Error(f"count must be between 1 and {MAX_GENERATE}")
    if prior not in ("auto", "model"):
        raise gr.Error(f"prior must be 'auto' or 'model', got {prior!r}")
    pipe = editor(models, model)
    refusal = refusal_to_sample(models, model, prior)
    if refusal:
        raise gr.Error(refusal)
    images = pipe.sample(count, temperature=float(temperature), seed=int(seed), prior=prior)
    names = [f"sample_{i:03d}" for i in range(len(images))]
    drawn = "" if prior == "auto" else "_model-prior"
    archive = f"samples_seed{int(seed)}_t{float(temperature):g}{drawn}.zip"
    return images, zip_images(images, names, archive)


def refusal_to_sample(models: dict[str, str], model: str, prior: str = "auto") -> str | None:
    """Why Generate refuses to sample ``model`` from ``prior`` (the CLI's own check, see
    ``check_worth_sampling``), or None when it samples."""
    try:
        check_worth_sampling(editor(models, model), model, prior, anyway=f"pick {OWN_PRIOR!r}")
    except HVAEError as error:
        return str(error)
    return None


def sampling_note(models: dict[str, str], model: str) -> str:
    """What the Generate tab says under its settings about the selected pipeline."""
    if pipeline_class(models[model]) == CODEC_CLASS:
        return ""
    refusal = refusal_to_sample(models, model)
    return f"**The default prior is refused for this pipeline.** {refusal}" if refusal else ""


def _codec(models: dict[str, str]):
    name = codec_name(models)
    if name is None:
        raise gr.Error("no codec is served: start the app with a compression pipeline")
    return pipeline(models[name])


def _unique_stems(paths: list[str]) -> list[str]:
    names, seen = [], set()
    for path in paths:
        stem, n = Path(path).stem or "image", 1
        name = stem
        while name in seen:
            n += 1
            name = f"{stem}-{n}"
        seen.add(name)
        names.append(name)
    return names


def compress_uploads(
    models: dict[str, str],
    paths: list[str] | None,
    quality: float,
    refine_steps: float = DEFAULT_REFINE_STEPS,
    tune: str = "psnr",
):
    """Uploads -> (path of the .hvz, rows of the per-image table, the decoded images)."""
    from hvae.rd_benchmark import decode_pillow, image_scores, jpeg_within

    if not paths:
        raise gr.Error("upload one or more images first")
    if len(paths) > MAX_COMPRESS_FILES:
        raise gr.Error(f"at most {MAX_COMPRESS_FILES} images at a time, got {len(paths)}")
    pipe = _codec(models)
    images = [load_upload(path, pipe.pixel_multiple) for path in paths]
    total = sum(image.width * image.height for image in images)
    if total > COMPRESS_MAX_PIXELS:
        raise gr.Error(
            f"these images hold {total / 1e6:.1f} MP; one request may hold {COMPRESS_MAX_PIXELS / 1e6:g} MP"
        )
    quality = int(quality)
    names = _unique_stems(paths)
    archive = scratch_folder() / ("images.hvz" if len(names) > 1 else f"{names[0]}.hvz")
    rows, decoded_images = [], []
    try:
        with ArchiveWriter(archive, pipe.fingerprint()) as writer:
            for name, image in zip(names, images, strict=True):
                payload = pipe.encode_image(
                    image, quality, refine_steps=int(refine_steps), tune=tune
                )
                writer.add(Record(name, image.height, image.width, quality, payload))
                decoded = pipe.decode_image(payload, (image.height, image.width))
                decoded_images.append((decoded, name))
                jpeg_quality, jpeg = jpeg_within(image, len(payload))
                original = to_tensor([image])
                ours = image_scores(original, decoded)
                theirs = image_scores(original, decode_pillow(jpeg)[0])
                pixels = image.width * image.height
                rows.append(
                    [
                        name,
                        f"{image.width}x{image.height}",
                        len(payload),
                        round(8 * len(payload) / pixels, 4),
                        round(ours[0], 2),
                        None if ours[1] is None else round(ours[1], 4),
                        jpeg_quality,
                        len(jpeg),
                        round(8 * len(jpeg) / pixels, 4),
                        round(theirs[0], 2),
                        None if theirs[1] is None else round(theirs[1], 4),
                    ]
                )
    except HVAEError as error:
        raise gr.Error(_readable(error)) from None
    return str(archive), rows, decoded_images


def decompress_upload(models: dict[str, str], path: str | None):
    """An uploaded .hvz -> (decoded images with their names, a zip of them as PNGs)."""
    if not path:
        raise gr.Error("upload a .hvz archive first")
    if Path(path).stat().st_size > MAX_ARCHIVE_BYTES:
        raise gr.Error(f"archives over {MAX_ARCHIVE_BYTES // 2**20} MB are refused")
    pipe = _codec(models)
    try:
        reader = pipe.open_archive(path)
        entries = list(reader.records())
    except ArchiveError as error:
        raise gr.Error(_readable(error)) from None
    gallery, damaged = [], []
    for _, record in entries:
        if isinstance(record, DamagedRecord):
            damaged.append(str(record))
            continue
        try:  # the size is the archive's claim: refuse it before allocating anything
            check_image_size(record.width, record.height, pipe.pixel_multiple, UPLOAD_MAX_PIXELS)
        except HVAEError as error:
            damaged.append(f"{record.name}: {error}")
            continue
        try:
            gallery.append(
                (
                    pipe.decode_image(
                        record.payload, (record.height, record.width), reader.version
                    ),
                    record.name,
                )
            )
        except DamagedRecord as error:
            damaged.append(f"{record.name}: {error}")
    if damaged:
        gr.Warning(f"{len(damaged)} record(s) could not be decoded: " + "; ".join(damaged[:3]))
    if not gallery:
        raise gr.Error("no image in this archive could be decoded")
    images, names = zip(*gallery, strict=True)
    stems = _unique_stems(list(names))
    return list(gallery), zip_images(list(images), stems, "decoded.zip")


def build_app(models: dict[str, str] | None = None) -> gr.Blocks:
    models = models or bundled_models()
    if not models:
        raise HVAEError("no pipeline to serve: checkpoints/ has none and --model gave none")
    # The dropdown picks what Edit and Generate use; the Compress tab always uses the codec.
    editors = [n for n, path in models.items() if pipeline_class(path) != CODEC_CLASS]
    first = (editors or list(models))[0]
    codec = codec_name(models)

    with EditorApp(title="hvae editor", delete_cache=GRADIO_CACHE_CLEANUP) as app:
        gr.Markdown(
            "# Hierarchical-VAE editor and codec\nEdit: upload an image, then move the sliders. "
            "Compress: upload images, get a `.hvz` archive and a comparison with JPEG."
        )
        model = gr.Dropdown(editors or list(models), value=first, label="pipeline")
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
                gr.Slider(value=0.0, elem_id=f"slider-{i}", **settings)
                for i, settings in enumerate(slider_settings(models, first))
            ]
            with gr.Row():
                samples = sample_images()
                sample = gr.Dropdown(list(samples), value=next(iter(samples)), label="or a sample")
                use_sample = gr.Button("edit this sample")
            reset = gr.Button("reset")
        with gr.Tab("Generate"):
            with gr.Row():
                seed = gr.Number(0, label="seed", precision=0)
                temperature = gr.Slider(0.0, 1.5, value=0.8, step=0.05, label="temperature")
                count = gr.Slider(1, MAX_GENERATE, value=8, step=1, label="count")
                prior = gr.Radio(
                    [("fitted to real images' latents", "auto"), (OWN_PRIOR, "model")],
                    value="auto",
                    label="top latent groups drawn from",
                )
            note = gr.Markdown(sampling_note(models, first), elem_id="sampling-note")
            run = gr.Button("generate")
            gallery = gr.Gallery(label="samples", columns=8)
            archive = gr.File(label="download all (zip)")
            generated = gr.State([])
            with gr.Row():
                which = gr.Number(1, label="sample number to edit", precision=0)
                edit_generated = gr.Button("edit it (Edit tab)")
        with gr.Tab("Compress"):
            gr.Markdown(
                f"Codec: **{codec}**. Each image is entropy-coded under the hierarchical VAE; "
                "the table sets it beside JPEG at the same file size or just under it."
                if codec
                else "No codec is served: start the app with a compression pipeline."
            )
            with gr.Row():
                to_compress = gr.File(
                    label="images to compress",
                    file_count="multiple",
                    file_types=["image"],
                    type="filepath",
                    elem_id="compress-upload",
                )
                with gr.Column():
                    quality = gr.Slider(
                        1,
                        len(QUALITY_STEPS),
                        value=DEFAULT_QUALITY,
                        step=1,
                        label=f"quality (1: smallest files, {len(QUALITY_STEPS)}: best)",
                    )
                    refine = gr.Slider(
                        0,
                        60,
                        value=DEFAULT_REFINE_STEPS,
                        step=1,
                        label="encoder search (iterations; 0: about 20x faster, larger files)",
                    )
                    tune = gr.Radio(
                        list(TUNINGS), value="psnr", label="the search favours (PSNR or MS-SSIM)"
                    )
                    compress = gr.Button("compress", elem_id="compress")
                    hvz = gr.File(label="archive (.hvz)", elem_id="hvz")
            table = gr.Dataframe(
                headers=COMPRESS_COLUMNS,
                label="per image: ours against JPEG at the same size",
                elem_id="compress-table",
            )
            compressed = gr.Gallery(label="decoded from the archive", columns=6)
            gr.Markdown("### Decompress")
            with gr.Row():
                to_decompress = gr.File(
                    label=".hvz archive", file_types=[".hvz"], type="filepath", elem_id="hvz-upload"
                )
                decoded_zip = gr.File(label="decoded images (zip)")
            decoded = gr.Gallery(label="decoded images", columns=6, elem_id="decoded")

        def into_editor(encoded):
            """(codes, image, decode) -> the Edit tab's outputs, every slider back at 0."""
            return served([*encoded]) + [gr.update(value=0.0)] * MAX_SLIDERS

        def on_upload(name, path):
            return into_editor(encode_upload(models, name, path))

        upload.upload(
            on_upload,
            [model, upload],
            [codes, before, after, *sliders],
            api_name="encode",
        )

        def on_image(name, image):
            return into_editor(encode_image(models, name, image))

        use_sample.click(
            lambda name, key: on_image(name, samples[key]),
            [model, sample],
            [codes, before, after, *sliders],
            api_name="sample",
        )

        def on_generated(name, images, number):
            if not images:
                raise gr.Error("generate some samples first")
            if not 1 <= int(number) <= len(images):
                raise gr.Error(f"sample number must be between 1 and {len(images)}")
            return on_image(name, images[int(number) - 1])

        edit_generated.click(
            on_generated,
            [model, generated, which],
            [codes, before, after, *sliders],
            api_name="edit_generated",
        )
        for slider in sliders:
            slider.release(
                lambda name, state, *s: served(apply_edits(models, name, state, *s)),
                [model, codes, *sliders],
                after,
                api_name="edit" if slider is sliders[0] else False,
            )
        reset.click(
            lambda name, state: (
                [served(apply_edits(models, name, state))] + [gr.update(value=0.0)] * MAX_SLIDERS
            ),
            [model, codes],
            [after, *sliders],
            api_name="reset",
        )
        model.change(
            lambda name: [
                None,
                None,
                None,
                *slider_updates(models, name),
                sampling_note(models, name),
            ],
            [model],
            [codes, before, after, *sliders, note],
            api_name="switch",
        )

        def on_generate(name, s, t, n, drawn_from):
            images, zipped = generate(models, name, s, t, n, drawn_from)
            return served(images), zipped, images  # the state keeps the images themselves

        run.click(
            on_generate,
            [model, seed, temperature, count, prior],
            [gallery, archive, generated],
            api_name="generate",
        )
        # Compression is the heaviest event: one at a time, so slider edits keep a core.
        compress.click(
            lambda paths, q, r, t: served(compress_uploads(models, paths, q, r, t)),
            [to_compress, quality, refine, tune],
            [hvz, table, compressed],
            api_name="compress",
            concurrency_limit=1,
            concurrency_id="codec",
        )
        to_decompress.upload(
            lambda path: served(decompress_upload(models, path)),
            [to_decompress],
            [decoded, decoded_zip],
            api_name="decompress",
            concurrency_limit=1,
            concurrency_id="codec",
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
