"""The search app (`vl demo`) served for real: it serves only its index's files, and in headless Chromium
(Debian's, driven by Playwright) a typed query shows playing results, two users searching at once each
see their own results, and a non-video upload shows a clear error."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from vl.search import BuildOptions, Searcher, build_index
from vl.search.app import AppLimits, launch
from vl.search.encoder import Encoder

CHROMIUM_TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing; skips (saying why) only where that is impossible."""
    found = shutil.which("chromium")
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("Chromium is not installed and cannot be installed here (needs apt-get as root): "
                    "run `apt-get install chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:  # stale package lists: refresh once
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0 or not shutil.which("chromium"):
        pytest.skip(f"Chromium could not be installed with apt-get: {result.stderr.strip()[-300:]}")
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def served(tmp_path_factory, synth_dir):
    """The app over a 12-clip shard index, listening on a free local port; yields (base URL, searcher)."""
    from vl.models import create_model

    root = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    model = create_model("vl_tiny")
    torch.save({"vl_model_config": model.config, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "vl_preprocess": {"num_frames": 4, "frame_size": 32}}, root / "tiny.ckpt")
    encoder = Encoder.from_checkpoint(str(root / "tiny.ckpt"))
    build_index(root / "tiny.ckpt", [synth_dir["test"]], root / "index", BuildOptions(progress=False), encoder=encoder)
    searcher = Searcher(root / "index", encoder=encoder)
    demo = launch(searcher, AppLimits(max_k=8, default_k=4), port=_free_port(), block=False, quiet=True)
    yield demo.local_url.rstrip("/"), searcher
    demo.close()


def test_app_serves_only_the_files_of_its_index(served, synth_dir):
    import httpx

    base, searcher = served
    media = searcher.media_files()[0]
    assert httpx.get(f"{base}/gradio_api/file={media}").content == Path(media).read_bytes()
    forbidden = [searcher.root / "config.json", searcher.root / "items.jsonl", searcher.root / "videos.faiss",
                 Path(synth_dir["test"].replace("{000000..000000}", "000000")), Path("pyproject.toml").resolve(),
                 Path("/etc/passwd"), Path(media).parent]
    for path in forbidden:
        assert httpx.get(f"{base}/gradio_api/file={path}").status_code == 403, path
    assert httpx.get(f"{base}/gradio_api/file={Path(media).parent}/../../config.json").status_code == 403


def _search(page, query: str) -> None:
    page.locator("#query textarea").fill(query)
    page.locator("#search-button").click()


def _result_keys(page, count: int) -> list[str]:
    """The keys shown under the first ``count`` results, once that many videos are on the page."""
    page.wait_for_function(f"document.querySelectorAll('.vl-result video').length === {count}",
                           timeout=CHROMIUM_TIMEOUT_MS)
    texts = page.locator(".vl-result [data-testid=markdown]").all_inner_texts()
    return [t.split("·")[1].split()[0] for t in texts if "·" in t][:count]


def test_browser_search_and_upload(served, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    base, searcher = served
    queries = [searcher.items[2]["captions"][0], "一只红色的正方形 🟥 " + "very long query " * 300]
    expected = [[h.key for h in searcher.query(q, k=4)] for q in queries]
    (tmp_path / "notes.txt").write_text("this is not a video")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        try:
            pages = [browser.new_context().new_page() for _ in queries]  # two users, two sessions
            for page in pages:
                page.goto(base, timeout=CHROMIUM_TIMEOUT_MS)
            for page, query in zip(pages, queries):
                _search(page, query)  # both searches in flight at once
            for page, keys in zip(pages, expected):
                assert _result_keys(page, 4) == keys
                assert "similarity" in page.locator(".vl-result").first.inner_text()
                playing = "[...document.querySelectorAll('.vl-result video')].some(v => v.currentTime > 0)"
                page.wait_for_function(playing, timeout=CHROMIUM_TIMEOUT_MS)  # the clips autoplay

            page = pages[0]
            page.get_by_role("tab", name="Search by video").click()
            page.locator("#upload input[type=file]").set_input_files(str(tmp_path / "notes.txt"))
            page.wait_for_function("document.querySelector('#upload-status').innerText.includes('Error')",
                                   timeout=CHROMIUM_TIMEOUT_MS)
            assert "notes.txt is not a video this app can read" in page.locator("#upload-status").inner_text()
        finally:
            browser.close()
