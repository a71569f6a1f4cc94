"""``vl demo``: a Gradio app over a search index.

    vl demo --index runs/demo/index [--port 7860] [--host 127.0.0.1]

Text search shows the top-k videos playing, with scores and captions, optionally re-ranked by the VTM
head; uploading a video finds similar videos and the index captions that match it best. The app serves
the index's own video files and nothing else (Gradio ``allowed_paths`` is exactly that list); uploads
are checked (size, readable video, duration) before any decoding, and every failure becomes a message.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
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
    return data


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


def _status(text: str, error: bool = False) -> str:
    return f"**Error:** {_esc(text)}" if error else _esc(text)


def _result_grid(max_k: int) -> list[Any]:
    """max_k hidden result slots (autoplaying video, caption) laid out four per row."""
    import gradio as gr

    comps: list[Any] = []
    for start in range(0, max_k, 4):
        with gr.Row(equal_height=False):
            for _ in range(start, min(max_k, start + 4)):
                with gr.Column(min_width=200, elem_classes=["vl-result"]):
                    video = gr.Video(autoplay=True, loop=True, interactive=False, height=200, visible=False)
                    caption = gr.Markdown(visible=False)
                comps += [video, caption]
    return comps


def build_app(searcher: Searcher, limits: Optional[AppLimits] = None):
    """The Gradio Blocks of the search app (not launched)."""
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
                                     info=None if searcher.encoder.has_vtm else "this model has no VTM head")
            button = gr.Button("Search", variant="primary", elem_id="search-button")
            status = gr.Markdown(elem_id="search-status")
            slots = _result_grid(limits.max_k)
            outputs = [status] + slots
            if examples:
                gr.Examples([[q] for q in examples], inputs=[query], label="Example queries (from the index)")
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
            video_slots = _result_grid(limits.max_k)
            upload.upload(app.upload, [upload, k], [upload_status, preview, caption_table] + video_slots)
    return demo


def launch(searcher: Searcher, limits: Optional[AppLimits] = None, host: str = "127.0.0.1", port: Optional[int] = None,
           block: bool = True, quiet: bool = False):
    """Serve the app; only the index's video files are served (``allowed_paths``). Returns the Blocks."""
    import gradio as gr

    limits = limits or AppLimits()
    demo = build_app(searcher, limits)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts
    demo.queue(default_concurrency_limit=4, max_size=64)
    demo.launch(server_name=host, server_port=port, allowed_paths=searcher.media_files(),
                max_file_size=int(limits.max_upload_mb * 1e6), prevent_thread_lock=not block, show_error=False,
                ssr_mode=False, quiet=quiet, theme=theme, footer_links=["gradio"], share=False)
    return demo


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
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """``vl demo``: load the index and its model, then serve until interrupted."""
    args = _parser().parse_args(argv)
    if args.max_k < 1 or args.max_upload_mb <= 0 or args.max_duration <= 0:
        print("error: --max-k, --max-upload-mb and --max-duration must be positive", file=sys.stderr)
        return 2
    set_threads(args.threads)
    try:
        searcher = Searcher(args.index, ckpt=args.ckpt, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    limits = AppLimits(max_k=args.max_k, default_k=min(6, args.max_k), max_upload_mb=args.max_upload_mb,
                       max_duration_s=args.max_duration)
    print(f"serving {len(searcher)} videos from {args.index} on http://{args.host}:{args.port}")
    launch(searcher, limits, host=args.host, port=args.port)
    return 0
