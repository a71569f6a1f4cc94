"""The search app (`vl demo`) served for real: it serves only its index's files and its own uploads (not
Gradio's shared folders), holds uploads to a total size and deletes them when it stops (SIGTERM included),
and in headless Chromium (Debian's, driven by Playwright) a typed query shows playing results, two users
searching at once each see their own results, and a non-video upload shows a clear error."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
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
    """The app over a 12-clip shard index, listening on a free local port; yields (base URL, searcher, app)."""
    from vl.models import create_model

    root = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    model = create_model("vl_tiny")
    torch.save({"vl_model_config": model.config, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "vl_preprocess": {"num_frames": 4, "frame_size": 32}}, root / "tiny.ckpt")
    encoder = Encoder.from_checkpoint(str(root / "tiny.ckpt"))
    build_index(root / "tiny.ckpt", [synth_dir["test"]], root / "index", BuildOptions(progress=False), encoder=encoder)
    searcher = Searcher(root / "index", encoder=encoder)
    app = launch(searcher, AppLimits(max_k=8, default_k=4), port=_free_port(), block=False, quiet=True)
    yield app.local_url.rstrip("/"), searcher, app
    app.close()


def _upload(base: str, name: str, data: bytes):
    """POST one file to Gradio's upload route, as the page does."""
    import httpx

    return httpx.post(f"{base}/gradio_api/upload", files={"files": (name, data, "video/mp4")}, timeout=60)


def test_app_serves_only_the_files_of_its_index(served, synth_dir, tmp_path, monkeypatch):
    """Index videos and the app's own uploads are served; every other file is refused (403), those in
    Gradio's shared upload folder and in ./.gradio/cached_examples under the working directory included."""
    import httpx

    base, searcher, app = served
    media = searcher.media_files()[0]
    assert httpx.get(f"{base}/gradio_api/file={media}").content == Path(media).read_bytes()
    forbidden = [searcher.root / "config.json", searcher.root / "items.jsonl", searcher.root / "videos.faiss",
                 Path(synth_dir["test"].replace("{000000..000000}", "000000")), Path("pyproject.toml").resolve(),
                 Path("/etc/passwd"), Path(media).parent]
    for path in forbidden:
        assert httpx.get(f"{base}/gradio_api/file={path}").status_code == 403, path
    assert httpx.get(f"{base}/gradio_api/file={Path(media).parent}/../../config.json").status_code == 403

    monkeypatch.chdir(tmp_path)  # Gradio's examples cache is ./.gradio/cached_examples of the working directory
    strangers = [Path(tempfile.gettempdir()) / "gradio" / uuid.uuid4().hex / "other_app.mp4",
                 tmp_path / ".gradio" / "cached_examples" / "17" / "cached.mp4"]
    try:
        for path in strangers:
            path.parent.mkdir(parents=True)
            path.write_bytes(b"a file this app never created")
            assert httpx.get(f"{base}/gradio_api/file={path}").status_code in (403, 404), path
    finally:
        shutil.rmtree(strangers[0].parent, ignore_errors=True)

    response = _upload(base, "clip.mp4", b"uploaded bytes")
    assert response.status_code == 200, response.text
    uploaded = Path(response.json()[0])
    assert uploaded.is_relative_to(app.files.uploads) and oct(app.files.root.stat().st_mode)[-3:] == "700"
    assert httpx.get(f"{base}/gradio_api/file={uploaded}").content == b"uploaded bytes"


def test_uploads_are_held_to_a_total_and_deleted_on_close(served, tmp_path):
    """Uploads beyond the storage limit are refused (413, with the reason) until old ones can be deleted;
    uploads must state their size; other request bodies are small; closing deletes every file."""
    import httpx

    _, searcher, _ = served
    gradio_env = os.environ.get("GRADIO_TEMP_DIR")
    limits = AppLimits(max_upload_mb=0.04, max_storage_mb=0.05, upload_keep_s=3600)
    app = launch(searcher, limits, port=_free_port(), block=False, quiet=True, files_parent=tmp_path)
    try:
        base = app.local_url.rstrip("/")
        first = _upload(base, "first.mp4", os.urandom(30_000))
        assert first.status_code == 200, first.text
        second = _upload(base, "second.mp4", os.urandom(30_000))
        assert second.status_code == 413 and "Upload storage is full" in second.text
        app.files.keep_s = 0.0  # the first upload may now be deleted to make room
        third = _upload(base, "third.mp4", os.urandom(30_000))
        assert third.status_code == 200, third.text
        assert not Path(first.json()[0]).exists() and Path(third.json()[0]).is_file()

        chunked = httpx.post(f"{base}/gradio_api/upload", content=iter([b"--x\r\n"] * 3),
                             headers={"content-type": "multipart/form-data; boundary=x"})
        assert chunked.status_code == 411
        assert httpx.post(f"{base}/gradio_api/queue/join", content=b"{" + b" " * 2_000_000 + b"}",
                          headers={"content-type": "application/json"}).status_code == 413
    finally:
        app.close()
    assert list(tmp_path.iterdir()) == [] and os.environ.get("GRADIO_TEMP_DIR") == gradio_env


def test_demo_deletes_its_files_when_stopped(served):
    """`vl demo` stopped by SIGTERM (as by Ctrl-C) closes the server and deletes its upload folder."""
    import httpx

    from vl.cli import main

    _, searcher, _ = served
    port, seen, returned = _free_port(), {}, threading.Event()

    def stop_when_serving() -> None:
        deadline = time.monotonic() + 120
        while not returned.is_set() and time.monotonic() < deadline and "folder" not in seen:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    seen["folder"] = os.environ.get("GRADIO_TEMP_DIR")
            except httpx.HTTPError:
                time.sleep(0.2)
        if returned.is_set():  # the demo already returned (it failed to start): nothing to stop
            return
        os.kill(os.getpid(), signal.SIGTERM)
        if not returned.wait(30):  # SIGTERM did not stop it: stop it as Ctrl-C would, so that the test can fail
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    before = signal.signal(signal.SIGTERM, lambda *a: seen.setdefault("sigterm_ignored", True))
    stopper = threading.Thread(target=stop_when_serving, daemon=True)
    try:
        stopper.start()
        seen["rc"] = main(["demo", "--index", str(searcher.root), "--port", str(port), "--threads", "1"])
    except KeyboardInterrupt:
        seen["rc"] = "interrupted"
    finally:
        returned.set()
        stopper.join(timeout=60)  # a SIGTERM it sends lands on a handler, never on the default (exit)
        signal.signal(signal.SIGTERM, before)
    assert seen["rc"] == 0 and "sigterm_ignored" not in seen
    assert seen["folder"] and "vl-demo-" in seen["folder"] and not Path(seen["folder"]).parent.exists()


def test_demo_limits_are_checked(tmp_path, capsys):
    from vl.cli import main

    assert main(["demo", "--index", str(tmp_path), "--max-storage-mb", "10", "--max-upload-mb", "20"]) == 2
    assert "--max-storage-mb (10) must be at least --max-upload-mb (20)" in capsys.readouterr().err


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
    base, searcher, _ = served
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
