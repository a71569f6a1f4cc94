"""``vl demo``: a Gradio app over a search index.

    vl demo --index runs/demo/index [--port 7860] [--host 127.0.0.1]

Text search shows the top-k videos playing, with scores and captions, optionally re-ranked by the VTM
head (offered only when the checkpoint trained it); uploading a video finds similar videos and the index
captions that match it best.

The app serves the index's own video files and its own uploads, nothing else: Gradio keeps uploads and
cached examples in folders shared by every Gradio process of the machine (``$TMPDIR/gradio``) or under the
working directory (``./.gradio``) and serves whatever is in them, so this app gets a private folder
(``AppFiles``) that is removed when it stops, and those shared folders are blocked. Uploads are held to a
total size, and each is checked (bytes, readable video, duration, and the decoding work its container
declares: frame size, frames, frames x pixels) before any frame is decoded; every failure becomes a message.
"""

from __future__ import annotations

import argparse
import html
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline first: no telemetry calls

from datapipes.decode import SkipSample, is_image_bytes, probe_video  # noqa: E402
from vl.search.encoder import set_threads  # noqa: E402
from vl.search.index import Hit, Searcher, VideoMatches  # noqa: E402

log = logging.getLogger(__name__)
MARKDOWN_SPECIALS = set("\\`*_[]#|~$")


@dataclass
class AppLimits:
    """What the app accepts."""

    max_k: int = 12  # result slots on the page
    default_k: int = 6
    max_upload_mb: float = 100.0  # larger uploads are refused
    max_duration_s: float = 600.0  # longer uploaded videos are refused
    # The decoding work of one upload, read from its container before any frame is decoded: bytes do not
    # bound it (66 KB of mp4 can hold 480 frames of 4096x4096, seconds of CPU to decode).
    max_frame_pixels: int = 3840 * 2160  # larger frames are refused (4K UHD)
    max_decode_mpix: float = 4000.0  # frames x width x height, megapixels (~1 900 frames of 1920x1080)
    max_frames: int = 36_000  # frames of one upload (600 s at 60 fps): each is a decoder call however small
    max_storage_mb: float = 1000.0  # all uploads held at once; the oldest make room for new ones
    upload_keep_s: float = 600.0  # an upload younger than this is never deleted to make room
    rerank_depth: int = 32  # candidates re-scored by VTM


def _esc(text: str) -> str:
    """Text shown inside Markdown as itself: one line, HTML escaped, Markdown punctuation as entities."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return "".join(f"&#{ord(c)};" if c in MARKDOWN_SPECIALS else c for c in text)


def describe_hit(hit: Hit) -> str:
    """The Markdown under one result: key, scores, up to three captions."""
    score = f"VTM match {hit.vtm:.3f} · similarity {hit.similarity:.3f}" if hit.vtm is not None \
        else f"similarity {hit.similarity:.3f}"
    captions = "<br>".join(f"“{_esc(c)}”" for c in hit.captions[:3]) or "*(no caption)*"
    return f"**#{hit.rank} · {_esc(hit.key)}**  \n{score}  \n{captions}"


def check_upload(path: Optional[str], limits: AppLimits) -> bytes:
    """The bytes of an uploaded video; ValueError with a message for anything that is not one we take."""
    if not path:
        raise ValueError("Upload a video file (mp4, webm, mkv, avi, mov).")
    size = os.path.getsize(path)
    name = Path(path).name
    if size > limits.max_upload_mb * 1e6:
        raise ValueError(f"{name} is {size / 1e6:.1f} MB: uploads are limited to {limits.max_upload_mb:g} MB.")
    if size == 0:
        raise ValueError(f"{name} is empty.")
    data = Path(path).read_bytes()
    if is_image_bytes(data):
        raise ValueError(f"{name} is an image, not a video: upload a video file.")
    try:
        info = probe_video(data)
    except SkipSample:
        raise ValueError(f"{name} is not a video this app can read: "
                         "upload an mp4, webm, mkv, avi or mov file.") from None
    if info["duration"] > limits.max_duration_s:
        raise ValueError(f"{name} lasts {info['duration']:.0f} s: videos are limited to {limits.max_duration_s:g} s.")
    check_decode_work(name, data, info["width"], info["height"], limits)
    return data


def count_video_frames(data: bytes, stop_after: int) -> int:
    """Packets of the first video stream in ``data`` (one per frame), counted by demuxing without decoding,
    up to ``stop_after + 1``.

    Matroska and WebM headers state no frame count and any header can understate it, so the packets the
    decoder would be fed are counted: this reads the container, not the pixels. Raises ValueError for
    bytes PyAV cannot demux.
    """
    import av

    count = 0
    try:
        with av.open(io.BytesIO(data)) as container:
            for packet in container.demux(container.streams.video[0]):
                count += packet.size > 0  # demuxing ends with an empty flush packet
                if count > stop_after:
                    break
    except (av.FFmpegError, IndexError) as e:
        raise ValueError(f"cannot read the video's frames: {type(e).__name__}: {e}") from None
    return count


def check_decode_work(name: str, data: bytes, width: int, height: int, limits: AppLimits) -> None:
    """ValueError, with a message for the user, when decoding the video would take more than ``limits``
    allow: frames over ``max_frame_pixels``, or more frames than ``max_frames`` or than ``max_decode_mpix``
    (frames x width x height) buys at this frame size. Nothing is decoded here."""
    pixels = width * height
    if pixels <= 0:
        raise ValueError(f"{name} states no frame size: upload an mp4, webm, mkv, avi or mov file.")
    if pixels > limits.max_frame_pixels:
        raise ValueError(f"{name} has {width}x{height} frames: frames are limited to "
                         f"{limits.max_frame_pixels / 1e6:.1f} megapixels.")
    budget = min(limits.max_frames, int(limits.max_decode_mpix * 1e6 // pixels))
    try:
        frames = count_video_frames(data, stop_after=budget)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    if frames > budget:
        raise ValueError(f"{name} has more than {budget} frames of {width}x{height}: uploads are limited to "
                         f"{limits.max_decode_mpix:g} megapixels of video (frames x width x height) and "
                         f"{limits.max_frames} frames; upload a shorter or smaller clip.")


class SearchApp:
    """The app's event handlers over one ``Searcher`` (shared by every session; it is thread-safe)."""

    def __init__(self, searcher: Searcher, limits: Optional[AppLimits] = None) -> None:
        self.searcher = searcher
        self.limits = limits or AppLimits()

    def _slots(self, hits: Sequence[Hit]) -> list[Any]:
        """Updates of every result slot: (video, caption) for each of max_k slots."""
        import gradio as gr

        out: list[Any] = []
        for i in range(self.limits.max_k):
            if i < len(hits):
                h = hits[i]
                label = f"#{h.rank} · {h.score:.3f}"
                out += [gr.update(value=h.path, label=label, visible=True),
                        gr.update(value=describe_hit(h), visible=True)]
            else:
                out += [gr.update(value=None, visible=False), gr.update(value="", visible=False)]
        return out

    def search(self, query: str, k: float, rerank: bool) -> list[Any]:
        """Text search -> [status, *slots]."""
        try:
            hits = self.searcher.query(query, k=int(k), rerank=bool(rerank), rerank_depth=self.limits.rerank_depth)
        except ValueError as e:
            return [_status(str(e), error=True)] + self._slots([])
        except Exception as e:  # the app must stay up whatever a model or file does
            log.exception("search failed")
            return [_status(f"Search failed: {type(e).__name__}: {e}", error=True)] + self._slots([])
        how = "re-ranked by VTM" if rerank else "by embedding similarity"
        return [_status(f"{len(hits)} of {len(self.searcher)} videos, {how}.")] + self._slots(hits)

    def upload(self, path: Optional[str], k: float) -> list[Any]:
        """Video search -> [status, preview, caption rows, *slots]."""
        import gradio as gr

        empty = [gr.update(value=None, visible=False), []]
        try:
            matches: VideoMatches = self.searcher.similar(check_upload(path, self.limits), k=int(k))
        except (ValueError, SkipSample) as e:
            text = str(e) if isinstance(e, ValueError) else f"This file cannot be decoded as a video ({e.reason})."
            return [_status(text, error=True)] + empty + self._slots([])
        except Exception as e:
            log.exception("video search failed")
            return [_status(f"Video search failed: {type(e).__name__}: {e}", error=True)] + empty + self._slots([])
        rows = [[c.rank, round(c.score, 4), c.text, c.key] for c in matches.captions]
        status = _status(f"{len(matches.videos)} similar videos; {len(rows)} best-matching captions.")
        return [status, gr.update(value=path, visible=True), rows] + self._slots(matches.videos)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.{1 if nbytes >= 1e6 else 3}f} MB"


def _tree_bytes(path: Path) -> int:
    """Bytes of the files at or under ``path`` (0 for what vanished meanwhile)."""
    if not path.is_dir():
        try:
            return path.stat().st_size
        except OSError:
            return 0
    total = 0
    for folder, _, names in os.walk(path):
        for n in names:
            try:
                total += os.stat(os.path.join(folder, n)).st_size
            except OSError:
                continue
    return total


class AppFiles:
    """The files of one running app, in a private temporary folder (mode 0700) that ``close`` removes.

    ``uploads`` is Gradio's upload folder (``GRADIO_TEMP_DIR``), ``examples`` its examples cache
    (``GRADIO_EXAMPLES_CACHE``; the app caches none) and ``media`` the copies of index videos Gradio makes
    to play them. Gradio reads both variables when it builds components and again on every request, so
    ``activate`` sets them for the process until ``close`` (one app per process). Uploads are held to
    ``max_bytes`` in all: ``admit`` deletes the oldest uploads older than ``keep_s`` to make room for a new
    one, else refuses it.
    """

    ENV = ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE")

    def __init__(self, max_bytes: int, keep_s: float, parent: Optional[str | Path] = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vl-demo-", dir=parent)).resolve()
        self.uploads, self.examples, self.media = (self.root / n for n in ("uploads", "examples", "media"))
        for folder in (self.uploads, self.examples, self.media):
            folder.mkdir()
        self.max_bytes, self.keep_s = int(max_bytes), float(keep_s)
        self._reserved = 0  # bytes of uploads admitted and still arriving
        self._lock = threading.Lock()
        self._saved_env: dict[str, Optional[str]] = {}

    def shared_folders(self) -> list[str]:
        """The folders Gradio would otherwise write to and serve: ``$TMPDIR/gradio`` (or the caller's
        ``GRADIO_TEMP_DIR``) and ``./.gradio``, shared with every other Gradio app. Blocked while serving."""
        env = self._saved_env if self._saved_env else os.environ
        found = [env.get("GRADIO_TEMP_DIR") or os.path.join(tempfile.gettempdir(), "gradio"),
                 env.get("GRADIO_EXAMPLES_CACHE") or os.path.join(os.getcwd(), ".gradio")]
        out = [str(Path(f).resolve()) for f in found]
        return [f for f in dict.fromkeys(out) if not self.root.is_relative_to(f)]

    def activate(self) -> None:
        """Point Gradio at this app's folders (``GRADIO_TEMP_DIR``, ``GRADIO_EXAMPLES_CACHE``)."""
        for var, folder in zip(self.ENV, (self.uploads, self.examples)):
            self._saved_env.setdefault(var, os.environ.get(var))
            os.environ[var] = str(folder)

    def close(self) -> None:
        """Restore Gradio's variables and delete every file of the app."""
        for var, value in self._saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        self._saved_env.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def admit(self, nbytes: int) -> Optional[str]:
        """Reserve room for an upload of ``nbytes`` (``release`` it once the upload is stored); returns None
        when reserved, else the reason for refusing it."""
        with self._lock:
            used = _tree_bytes(self.uploads)
            over = used + self._reserved + nbytes - self.max_bytes
            if over > 0:
                used -= self._evict(over)
            if used + self._reserved + nbytes > self.max_bytes:
                return (f"Upload storage is full ({_mb(used + self._reserved)} of {_mb(self.max_bytes)} in use): "
                        f"try again in a few minutes.")
            self._reserved += nbytes
            return None

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes

    def _evict(self, need: int) -> int:
        """Delete whole uploads (Gradio's one folder per file), oldest first, none younger than ``keep_s``,
        until ``need`` bytes are freed; returns the bytes freed."""
        cutoff, freed = time.time() - self.keep_s, 0
        entries = []
        for entry in self.uploads.iterdir():
            try:
                entries.append((entry.stat().st_mtime, entry))
            except OSError:
                continue
        for mtime, entry in sorted(entries):
            if freed >= need or mtime > cutoff:
                break
            size = _tree_bytes(entry)
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            freed += size
        return freed


class UploadQuota:
    """ASGI middleware that holds request bodies to the app's limits before Gradio reads them.

    An upload (``POST .../upload``) must state its size (``Content-Length``) and get room from
    ``AppFiles.admit``, else it is answered 413 with the reason; every other POST body (queries and
    events, a few KB) is held to ``max_other_bytes``, so that no file rides into Gradio's cache inside an
    event payload past the storage limit.
    """

    def __init__(self, app: Any, files: AppFiles, max_other_bytes: int = 1 << 20) -> None:
        self.app, self.files, self.max_other_bytes = app, files, max_other_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers
        from starlette.responses import PlainTextResponse

        length = Headers(scope=scope).get("content-length", "")
        if not length.isdigit():
            await PlainTextResponse("Send the request's size (Content-Length).", 411)(scope, receive, send)
            return
        nbytes = int(length)
        if not scope["path"].rstrip("/").endswith("/upload"):
            if nbytes > self.max_other_bytes:
                await PlainTextResponse(f"Request bodies are limited to {self.max_other_bytes} bytes.", 413)(
                    scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        refusal = self.files.admit(nbytes)
        if refusal is not None:
            await PlainTextResponse(refusal, 413)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.files.release(nbytes)


def _status(text: str, error: bool = False) -> str:
    return f"**Error:** {_esc(text)}" if error else _esc(text)


def _result_grid(max_k: int, media_cache: Optional[Path]) -> list[Any]:
    """max_k hidden result slots (autoplaying video, caption) laid out four per row; the videos' copies
    go to ``media_cache`` (default: Gradio's upload folder), apart from the uploads and their storage limit."""
    import gradio as gr

    comps: list[Any] = []
    for start in range(0, max_k, 4):
        with gr.Row(equal_height=False):
            for _ in range(start, min(max_k, start + 4)):
                with gr.Column(min_width=200, elem_classes=["vl-result"]):
                    video = gr.Video(autoplay=True, loop=True, interactive=False, height=200, visible=False)
                    if media_cache is not None:
                        video.GRADIO_CACHE = str(media_cache)  # where Gradio copies a file it is given to play
                    caption = gr.Markdown(visible=False)
                comps += [video, caption]
    return comps


def build_app(searcher: Searcher, limits: Optional[AppLimits] = None, media_cache: Optional[Path] = None):
    """The Gradio Blocks of the search app (not launched); result videos are copied to ``media_cache``."""
    import gradio as gr

    limits = limits or AppLimits()
    app = SearchApp(searcher, limits)
    examples = searcher.example_queries()
    name = searcher.config.get("model", {}).get("name") or "model"
    with gr.Blocks(title="vl video search", analytics_enabled=False) as demo:
        gr.Markdown(f"## Video search\n{len(searcher)} videos · {_esc(name)} · index {_esc(searcher.root.name)}")
        with gr.Tab("Search by text"):
            with gr.Row():
                query = gr.Textbox(label="Query", placeholder=examples[0] if examples else "describe a video",
                                   elem_id="query", scale=4, max_length=4000)
                k = gr.Slider(1, limits.max_k, value=min(limits.default_k, limits.max_k), step=1, label="Results")
                rerank = gr.Checkbox(label="Re-rank with VTM", value=False, interactive=searcher.encoder.has_vtm,
                                     info=searcher.encoder.vtm_unavailable, elem_id="rerank")
            button = gr.Button("Search", variant="primary", elem_id="search-button")
            status = gr.Markdown(elem_id="search-status")
            slots = _result_grid(limits.max_k, media_cache)
            outputs = [status] + slots
            if examples:
                gr.Examples([[q] for q in examples], inputs=[query], label="Example queries (from the index)",
                            cache_examples=False)
            button.click(app.search, [query, k, rerank], outputs)
            query.submit(app.search, [query, k, rerank], outputs)
        with gr.Tab("Search by video"):
            with gr.Row():
                label = f"Upload a video (up to {limits.max_upload_mb:g} MB, {limits.max_duration_s:g} s)"
                upload = gr.File(label=label, type="filepath", file_count="single", elem_id="upload")
                preview = gr.Video(label="Uploaded", interactive=False, visible=False, height=240)
            upload_status = gr.Markdown(elem_id="upload-status")
            caption_table = gr.Dataframe(headers=["rank", "score", "caption", "video"], label="Best-matching captions",
                                         interactive=False, wrap=True)
            video_slots = _result_grid(limits.max_k, media_cache)
            upload.upload(app.upload, [upload, k], [upload_status, preview, caption_table] + video_slots)
    return demo


@dataclass
class ServedApp:
    """A running app and its private files; ``close`` stops the server and deletes the files."""

    demo: Any  # gradio.Blocks
    files: AppFiles

    @property
    def local_url(self) -> str:
        return self.demo.local_url

    def close(self) -> None:
        try:
            self.demo.close(verbose=False)
        finally:
            self.files.close()


def launch(searcher: Searcher, limits: Optional[AppLimits] = None, host: str = "127.0.0.1", port: Optional[int] = None,
           block: bool = True, quiet: bool = False, files_parent: Optional[str | Path] = None) -> ServedApp:
    """Serve the app with its files in a private folder under ``files_parent`` (default: the system temp dir).

    Served: the index's video files, Gradio's copies of them and this app's uploads; Gradio's shared
    folders are blocked. ``block``: serve until interrupted (Ctrl-C), then close, deleting the folder;
    else return the running ``ServedApp`` for the caller to close.
    """
    import gradio as gr
    from starlette.middleware import Middleware

    limits = limits or AppLimits()
    files = AppFiles(int(limits.max_storage_mb * 1e6), limits.upload_keep_s, files_parent)
    blocked = files.shared_folders()
    files.activate()
    try:
        served = ServedApp(build_app(searcher, limits, media_cache=files.media), files)
    except BaseException:
        files.close()
        raise
    served_paths = searcher.media_files() + [str(files.media)]
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts
    try:
        served.demo.queue(default_concurrency_limit=4, max_size=64)
        served.demo.launch(server_name=host, server_port=port, allowed_paths=served_paths, blocked_paths=blocked,
                           app_kwargs={"middleware": [Middleware(UploadQuota, files=files)]},
                           max_file_size=int(limits.max_upload_mb * 1e6), prevent_thread_lock=True, show_error=False,
                           ssr_mode=False, quiet=quiet, theme=theme, footer_links=["gradio"], share=False)
        if block:
            served.demo.block_thread()  # returns on Ctrl-C (KeyboardInterrupt)
    except BaseException:  # an interrupt while starting included
        served.close()
        raise
    if block:
        served.close()
    return served


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vl demo", description="Serve a search index in a Gradio app.")
    p.add_argument("--index", required=True, help="index directory written by `vl index`")
    p.add_argument("--ckpt", default=None, help="checkpoint to encode queries with (default: the index's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--device", default="cpu", help="device of the model (cpu, cuda)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of torch and FAISS (default: theirs)")
    p.add_argument("--max-k", type=int, default=12, help="result slots (default: 12)")
    p.add_argument("--max-upload-mb", type=float, default=100.0, help="largest upload accepted (default: 100)")
    p.add_argument("--max-duration", type=float, default=600.0, help="longest upload accepted, seconds (default: 600)")
    p.add_argument("--max-decode-mpix", type=float, default=4000.0, help="decoding work of one upload, frames x "
                   "width x height in megapixels, read from its container before decoding (default: 4000)")
    p.add_argument("--max-storage-mb", type=float, default=1000.0, help="all uploads kept at once; the oldest "
                   "are deleted to make room (default: 1000)")
    return p


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: stop as Ctrl-C does, so that the app's files are deleted on the way out."""
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    """``vl demo``: load the index and its model, then serve until interrupted."""
    args = _parser().parse_args(argv)
    if min(args.max_k, args.max_upload_mb, args.max_duration, args.max_decode_mpix) <= 0:
        print("error: --max-k, --max-upload-mb, --max-duration and --max-decode-mpix must be positive", file=sys.stderr)
        return 2
    if args.max_storage_mb < args.max_upload_mb:
        print(f"error: --max-storage-mb ({args.max_storage_mb:g}) must be at least --max-upload-mb "
              f"({args.max_upload_mb:g})", file=sys.stderr)
        return 2
    set_threads(args.threads)
    try:
        searcher = Searcher(args.index, ckpt=args.ckpt, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    limits = AppLimits(max_k=args.max_k, default_k=min(6, args.max_k), max_upload_mb=args.max_upload_mb,
                       max_duration_s=args.max_duration, max_decode_mpix=args.max_decode_mpix,
                       max_storage_mb=args.max_storage_mb)
    print(f"serving {len(searcher)} videos from {args.index} on http://{args.host}:{args.port}")
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        launch(searcher, limits, host=args.host, port=args.port)
    except KeyboardInterrupt:  # stopped while starting: launch has deleted its files
        print("stopped", file=sys.stderr)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0
