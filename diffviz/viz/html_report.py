"""``report(trace, path)``: one self-contained HTML file with the main figures of a trace.

plotly.js is inlined once (about 4.8 MB) and pictures are PNG data URIs, so the file opens from
disk with no network: classrooms are often offline.
"""

from __future__ import annotations

import functools
import html
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.offline import get_plotlyjs
from tqdm.auto import tqdm

from .. import __version__
from ..traces import Trace
from . import _draw as d
from . import figures

MAX_FRAMES = 25  # animation frames in a report; longer runs show evenly spaced steps (the trace keeps all)
GRID_PAGE = 16  # heat maps a page in the word grid; longer prompts get a menu of pages
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1040px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .meta td { padding: 0 1.5em 0 0; }
.lead { display: flex; gap: 2em; align-items: center; }
.lead img { width: 256px; image-rendering: pixelated; border: 1px solid #ccc; }
.note { color: #444; max-width: 60em; }
"""


@d.one_thread
def report(trace: Trace, path: str | Path, *, word: str | int | None = None,
           vae: torch.nn.Module | None = None, progress: bool = False,
           notes: dict[str, str] | None = None) -> Path:
    """Write one self-contained HTML report of ``trace`` to ``path``; returns the path.

    Sections: for a video, a strip of frames per word (which frames it shaped), then the rest on its
    middle latent frame; denoising (animated), where each word looks, when each word matters, where in the
    U-Net ``word`` acts (default: the word with the most attention), classifier-free guidance (when
    the trace has it), noise schedule and the final latent's channels. ``vae``: decode predicted x0
    exactly instead of the fast preview. ``progress``: a progress bar over the sections. ``notes``: more
    rows for the table beside the image, e.g. {"judge": diffviz.classroom.judge.describe(prompt, image)}.
    """
    path = Path(path)
    if trace.num_steps == 0:
        raise ValueError("this trace is empty: nothing was generated inside its "
                         "`with diffviz.trace(pipe)` block.")
    video, strips = None, []
    if trace.is_video:  # a strip of frames per word, then the image sections on the middle latent frame
        video, trace = trace, trace.frame(trace.num_frames // 2)
        strips = [(f"Which frames “{w}” shaped",
                   ("Its heat map at each latent frame, over the video frame that latent frame ends on, on "
                    "one colour scale for the whole video: a darker frame read the word less."),
                   functools.partial(figures.word_frames, video, w)) for w in dict.fromkeys(video.words)]
    word = d.default_word(trace) if word is None else trace.word_indices(word)[0]
    label = d.word_labels(trace)[word]
    frames = _frame_steps(trace.num_steps)
    shown = "" if frames is None else f" Showing {len(frames)} of the {trace.num_steps} steps."
    sections = [*strips,
        ("Denoising, step by step" + ("" if video is None else f", {_frame_name(video, trace)}"),
         (f"Left: the model's guess of the finished image (predicted x0) at each step. Middle: the noisy "
          f"latent it was given. Right: where “{label}” sent its information at that step. "
          f"It opens at the first step where signal outweighs noise; drag the slider back to step 0 to see "
          f"the guesses made from almost pure noise, or press play.{shown}"),
         lambda: figures.denoising(trace, word, steps=frames, vae=vae)),
        ("Where each word looks",
         ("Each word's cross-attention, averaged over all steps and layers, over the final image. "
          "Bright: the pixels that read this word. A word that occurs twice is one map with both "
          "occurrences summed, as trace.word_heatmap(word) gives it."),
         lambda: figures.word_grid(trace, per_page=GRID_PAGE)),
        ("When each word matters",
         ("Each word's share of the attention the prompt's words receive, per step. Words that act early "
          "shape the layout; words that act late shape details."), lambda: figures.word_mass(trace)),
        (f"Where in the U-Net “{label}” acts",
         ("One row per prompt-reading attention layer, in the order the model runs them "
          "(in a U-Net: coarse layers in the middle)."),
         lambda: figures.layer_step(trace, word)),
    ]
    if trace.noise_uncond is not None:
        sections.append((
            "What guidance does",
            (f"The model predicts the noise twice: without the prompt and with it. Their difference is what "
             f"the prompt adds; the sampler exaggerates it {trace.guidance_scale:g} times (the guidance "
             f"scale).{shown}"),
            lambda: figures.guidance(trace, steps=frames)))
    sections += [
        ("Noise schedule",
         "How much noise is left at each step: sigma falls to zero, alpha-bar rises to one.",
         lambda: figures.schedule(trace)),
        ("The final latent", "The image the VAE decodes lives in these latent channels.",
         lambda: figures.channels(trace, -1)),
    ]
    parts = []
    bar = tqdm(sections, desc="report", unit="figure", disable=not progress)
    for i, (title, note, make) in enumerate(bar):
        parts.append(f"<h2>{html.escape(title)}</h2>\n<p class='note'>{html.escape(note)}</p>\n"
                     + figure_html(make(), f"fig{i}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page(video or trace, parts, notes or {}), encoding="utf-8")
    return path


def _frames(trace: Trace) -> str:
    """", 81 frames" for a video with its frames, else ""."""
    return f", {len(trace.image)} frames" if trace.is_video and trace.image is not None else ""


def _frame_name(video: Trace, frame: Trace) -> str:
    """"latent frame 4 of 13 (video frames 13-16)"."""
    k = frame.options["frame"]
    out = video.output_frames_of(k)
    return f"latent frame {k} of {video.num_frames} (video frames {out[0]}-{out[-1]})"


def _frame_steps(n: int) -> list[int] | None:
    """At most MAX_FRAMES evenly spaced steps of ``n``, first and last included; None: all of them."""
    if n <= MAX_FRAMES:
        return None
    return sorted({round(i * (n - 1) / (MAX_FRAMES - 1)) for i in range(MAX_FRAMES)})


def figure_html(fig: go.Figure, div_id: str) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, auto_play=False,
                       config=dict(displaylogo=False, responsive=True))


def _page(trace: Trace, parts: list[str], notes: dict[str, str]) -> str:
    rows = [("prompt", trace.prompt), ("negative prompt", trace.negative_prompt or "(none)"), *notes.items(),
            ("model", trace.model.get("name") or trace.model.get("pipeline", "?")),
            ("scheduler", f"{trace.scheduler.get('name', '?')}, {trace.num_steps} steps"),
            ("guidance scale", f"{trace.guidance_scale:g}"), ("image", f"{trace.width} x {trace.height} px"
                                                                + _frames(trace)),
            ("captured", f"{len(trace.layers)} prompt-reading attention layers, {len(trace.tokens)} tokens")]
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>diffviz: {html.escape(trace.prompt)}</title>
<style>{STYLE}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>“{html.escape(trace.prompt)}”</h1>
<div class="lead"><img alt="generated image" src="{d.png_uri(d.final_image(trace))}">
<table class="meta">{table}</table></div>
{chr(10).join(parts)}
<p class="meta">Made with diffviz {__version__}. Works offline: everything is in this file.</p>
</body></html>
"""
