"""Commands of ``hvae`` that show the models at work: ui (the Gradio app) and demo."""

from __future__ import annotations

import time
from pathlib import Path

from hvae.cli.common import add_model_arg, check_output_folder, positive_int
from hvae.errors import HVAEError
from hvae.loading import bundled_names, load_codec, load_pipeline, model_help, resolve_model


def cmd_ui(args) -> int:
    try:
        from ui.app import build_app
    except ImportError as error:
        raise HVAEError(f"the editor needs Gradio: pip install -e '.[ui]' ({error})") from None
    models = {Path(m).name: resolve_model(m) for m in args.model} if args.model else None
    build_app(models).launch(server_name=args.host, server_port=args.port)
    return 0


def cmd_demo(args) -> int:
    from hvae.demo import SAMPLE_PHOTOS, run_compression_demo, run_demo

    started = time.perf_counter()
    out = Path(args.out)
    check_output_folder(args.out)
    run_demo(load_pipeline(args.model, purpose="run the demo"), out, n=args.n)
    if args.codec_model == "":
        print("--codec-model '': skipped the compression part")
    elif not SAMPLE_PHOTOS.is_dir():
        print(f"no sample photos in {SAMPLE_PHOTOS}: skipped the compression part")
    else:
        codec = load_codec(args.codec_model, purpose="compress")
        run_compression_demo(codec, SAMPLE_PHOTOS, out)
    print(f"done in {time.perf_counter() - started:.1f} s (model loading included)")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "ui",
        help="serve the Gradio app (edit with sliders, generate, compress)",
        description="Serve ui/app.py: an Edit tab (upload an image, one slider per direction; the image is "
        "encoded once and each slider release only decodes), a Generate tab (seed, temperature, count, "
        "gallery, zip download) and a Compress tab (images -> .hvz with a per-image table against JPEG at "
        "the same size; .hvz -> gallery). Needs pip install -e '.[ui]'. Works offline on the bundled pipelines.",
    )
    p.add_argument(
        "--model",
        action="append",
        help="pipeline folder, or the name of a bundled one "
        f"({', '.join(bundled_names())}), to serve; repeatable (default: every bundled pipeline)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser(
        "demo",
        help="reconstructions, samples and an edit strip from the bundled pipeline",
        description="Run the main job offline: held-out scenes through stage 1 alone and through the "
        "full pipeline (with PSNR), samples at temperature 0.8, and an edit strip; then the sample "
        "photos compressed into one archive and decoded. Writes PNGs to OUT and prints where they are.",
    )
    p.add_argument(
        "-o", "--out", default="demo_output", help="output folder (default: demo_output)"
    )
    p.add_argument(
        "-n", type=positive_int, default=8, help="held-out scenes to reconstruct (default: 8)"
    )
    add_model_arg(p)
    p.add_argument(
        "--codec-model",
        default=None,
        help=f"for the photo part, {model_help('codec')}; '' skips the photo part",
    )
    p.set_defaults(func=cmd_demo)
