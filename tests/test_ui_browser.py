"""A real browser (Debian's chromium, headless, through Playwright) uploads an image and moves a slider."""

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from hvae.data.shapes import ShapesDataset  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_upload_then_slider_changes_the_shown_image(tiny_pipeline_dir, tmp_path):
    from ui.app import build_app
    from ui.screenshots import free_port, upload_and_move_slider

    scene = tmp_path / "scene.png"
    ShapesDataset(1, seed=3, size=64)[0][0].save(scene)
    app = build_app({"tiny": str(tiny_pipeline_dir)})
    port = free_port()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    screenshot = Path(os.environ.get("HVAE_UI_SCREENSHOT", tmp_path / "editor.png"))
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            first = upload_and_move_slider(page, scene, 0, 0.9, timeout_ms=60_000)
            after = page.locator("#after img")
            assert after.get_attribute("src") != first
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    finally:
        app.close()
    assert screenshot.stat().st_size > 10_000
