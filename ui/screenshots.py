"""Screenshots of every tab of the app on the bundled pipelines, as a person would use it.

Launches ``ui/app.py``, drives Debian's chromium (headless, through Playwright) and
writes ``docs/ui_edit.png``, ``docs/ui_generate.png``, ``docs/ui_compress.png`` and
``docs/ui_decompress.png``. The README shows them.

    python -m ui.screenshots [--out docs] [--slider I] [--position P]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
from pathlib import Path

from hvae.data.shapes import ShapesDataset
from hvae.demo import HELD_OUT_SEED

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PHOTOS = sorted((ROOT / "tests" / "data" / "photos").glob("*.png"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload_and_move_slider(
    page, image: Path, slider: int, position: float, timeout_ms: int = 120_000
) -> str:
    """Upload ``image`` to the Edit tab, release slider ``slider`` at ``position`` (0..1 of its
    track), and wait until the edited image changes. Returns the image's src before the move."""
    page.locator("#upload input[type=file]").set_input_files(str(image))
    after = page.locator("#after img")
    after.wait_for(timeout=timeout_ms)
    before = after.get_attribute("src")
    track = page.locator(f"#slider-{slider} input[type=range]")
    track.scroll_into_view_if_needed()
    box = track.bounding_box()
    page.mouse.click(box["x"] + box["width"] * position, box["y"] + box["height"] / 2)
    page.wait_for_function(
        "old => { const img = document.querySelector('#after img');"
        " return img && img.getAttribute('src') !== old; }",
        arg=before,
        timeout=timeout_ms,
    )
    return before


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def main(argv: list[str] | None = None) -> None:
    from playwright.sync_api import sync_playwright

    from ui.app import build_app, bundled_models, codec_name, pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--slider", type=int, default=0, help="which slider to move (0 = first)")
    parser.add_argument(
        "--position", type=float, default=0.8, help="where to release it, 0..1 of the track"
    )
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed: apt-get install chromium")
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="hvae-screens-"))
    scene = work / "scene.png"
    ShapesDataset(1, seed=HELD_OUT_SEED, size=256)[0][0].save(scene)

    models = bundled_models()
    archive = work / "photos.hvz"
    codec = pipeline(models[codec_name(models)])
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in SAMPLE_PHOTOS]
    archive.write_bytes(codec.compress(photos, names=[p.stem for p in SAMPLE_PHOTOS]))

    app = build_app(models)
    port = free_port()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")

            upload_and_move_slider(page, scene, args.slider, args.position)
            page.screenshot(path=str(out / "ui_edit.png"), full_page=True)

            _tab(page, "Generate")
            page.get_by_role("button", name="generate").click()
            page.locator(".gallery-item, button.thumbnail-item").first.wait_for(timeout=120_000)
            page.screenshot(path=str(out / "ui_generate.png"), full_page=True)

            _tab(page, "Compress")
            page.locator("#compress-upload input[type=file]").set_input_files(
                [str(p) for p in SAMPLE_PHOTOS]
            )
            page.locator("#compress").click()
            page.locator("#hvz a").first.wait_for(timeout=120_000)
            page.wait_for_timeout(2000)  # the table and gallery render after the download link
            page.screenshot(path=str(out / "ui_compress.png"), full_page=True)

            page.locator("#hvz-upload input[type=file]").set_input_files(str(archive))
            page.locator("#decoded img").first.wait_for(timeout=120_000)
            page.locator("#decoded").scroll_into_view_if_needed()
            page.screenshot(path=str(out / "ui_decompress.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    print(
        f"wrote {', '.join(f'ui_{t}.png' for t in ('edit', 'generate', 'compress', 'decompress'))} to {out}"
    )


if __name__ == "__main__":
    main()
