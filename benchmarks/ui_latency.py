"""Slider-to-image latency of the Gradio editor, on this machine's CPU.

Launches ``ui/app.py`` on the bundled pipelines, uploads a 256×256 photo (or
scene, with ``--model scenes``; the scenes' sliders edit at 64×64, so the app
resizes it) through ``gradio_client`` and then measures:

1. the edit handler alone (decode of cached codes + PNG), called in-process;
2. one client's slider releases end to end (HTTP, queue, decode, PNG, download);
3. 8 concurrent clients × 20 edits each: errors and latency percentiles.

    python benchmarks/ui_latency.py [--model photos|scenes]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from gradio_client import Client, handle_file

from hvae.data.images import load_image
from hvae.data.shapes import ShapesDataset
from ui.app import MAX_SLIDERS, apply_edits, build_app, bundled_models, encode_upload, pipeline
from ui.screenshots import free_port

# A 256x256 crop of a held-out wallpaper, shipped with the tests.
PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "photos" / "evening_glow.png"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(name: str, seconds: list[float], errors: int = 0) -> str:
    ms = [s * 1000 for s in seconds]
    return f"| {name} | {len(ms)} | {errors} | {statistics.median(ms):.0f} | {percentile(ms, 95):.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument(
        "--model",
        default="photos",
        help="bundled pipeline to edit: photos (any size) or scenes (edits at 64x64)",
    )
    parser.add_argument("--edits", type=int, default=40, help="edits for the single-client runs")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=20)
    args = parser.parse_args()

    models = bundled_models()
    model = args.model
    pipe = pipeline(models[model])
    n_directions = min(len(pipe.directions), MAX_SLIDERS)
    scene = Path(tempfile.mkdtemp()) / "input.png"
    if model == "scenes":
        ShapesDataset(1, seed=5, size=args.size)[0][0].save(scene)
    else:
        photo = load_image(PHOTO)
        side = min(photo.size)
        photo.crop((0, 0, side, side)).resize((args.size, args.size)).save(scene)
    size = pipe.edit_size or args.size

    def strengths(i: int) -> list[float]:
        values = [0.0] * MAX_SLIDERS
        values[i % max(1, n_directions)] = round(((i % 7) - 3) * 0.5, 1)
        return values

    codes, _, _ = encode_upload(models, model, str(scene))
    handler = []
    for i in range(args.edits):
        started = time.perf_counter()
        apply_edits(models, model, codes, *strengths(i))
        handler.append(time.perf_counter() - started)

    app = build_app(models)
    port = free_port()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        client = Client(url, verbose=False)
        client.predict(model, handle_file(str(scene)), api_name="/encode")
        single = []
        for i in range(args.edits):
            started = time.perf_counter()
            client.predict(model, *strengths(i), api_name="/edit")
            single.append(time.perf_counter() - started)

        latencies: list[float] = []
        errors = [0]
        reasons: dict[str, int] = {}  # distinct failure messages, so a run says why it lost
        lock = threading.Lock()

        def user(index: int) -> None:
            try:
                own = Client(url, verbose=False)
                own.predict(model, handle_file(str(scene)), api_name="/encode")
            except Exception as error:  # noqa: BLE001 - every failure counts as an error
                with lock:
                    errors[0] += args.per_client
                    reason = f"encode (all of this client's edits): {type(error).__name__}: {error}"
                    reasons[reason[:200]] = reasons.get(reason[:200], 0) + args.per_client
                return
            for i in range(args.per_client):
                started = time.perf_counter()
                try:
                    own.predict(model, *strengths(index + i), api_name="/edit")
                except Exception as error:  # noqa: BLE001
                    with lock:
                        errors[0] += 1
                        reason = f"edit: {type(error).__name__}: {error}"[:200]
                        reasons[reason] = reasons.get(reason, 0) + 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)

        threads = [threading.Thread(target=user, args=(k,)) for k in range(args.clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        app.close()

    print(f"\nslider-to-image latency at {size}², bundled {model} pipeline, {n_directions} sliders")
    print("| measurement | edits | errors | p50 (ms) | p95 (ms) |")
    print("|---|---|---|---|---|")
    print(summary("edit handler in-process (decode + PIL)", handler))
    print(summary("1 client through gradio_client (end to end)", single))
    print(
        summary(
            f"{args.clients} concurrent clients × {args.per_client} edits", latencies, errors[0]
        )
    )
    print(
        f"\nconcurrent run: {len(latencies)} edits in {wall:.1f} s ({len(latencies) / wall:.1f} edits/s)"
    )
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        print(f"failed {count}×: {reason}")


if __name__ == "__main__":
    main()
