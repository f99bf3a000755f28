"""Building blocks shared by the figures and the explorer: images as PNG, heat maps placed over
an image, labels for steps, words and layers, and a step slider with a play button.

Every image axis is in image pixels of the trace (x right, y down), whatever resolution a
picture is drawn at, so an image and a heat map line up cell for cell.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image

from .. import heatmap
from ..decode import preview
from ..traces import Trace

MAX_IMAGE_SIDE = 256  # pictures are stored at most this large (px); a report stays small for 512 px models
PREVIEW_SIDE = 128  # linear previews hold latent-grid detail (64 cells for SD 1.5): larger only costs bytes
HEAT_COLORS = "Inferno"
SIGNED_COLORS = "RdBu_r"


def one_thread(fn):
    """Run ``fn`` with torch on one thread. Our tensors are kilobytes: on a busy 2-core machine,
    waking a second intra-op thread made heat maps 70x slower (2.7 s instead of 35 ms)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)
    return wrapper


# ---- pictures --------------------------------------------------------------------------------------
def png_uri(rgb: torch.Tensor | np.ndarray, max_side: int = MAX_IMAGE_SIDE, compress_level: int = 6) -> str:
    """[H, W, 3] uint8 -> "data:image/png;base64,...", shrunk to at most ``max_side`` pixels a side.
    ``compress_level`` 1 encodes about 4x faster than 6, for files about 20% larger."""
    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_array(uri: str) -> np.ndarray:
    """The inverse of ``png_uri``: [H, W, 3] uint8 from a PNG data URI."""
    data = base64.b64decode(uri.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def preview_uri(trace: Trace, step: int, of: str = "x0", fast: bool = False) -> str:
    """PNG data URI of the fast preview of ``of`` ("x0" or "latents") at ``step``, made directly at
    most PREVIEW_SIDE px a side (as ``Trace.preview``, without the detour through full size).
    ``fast``: quicker, larger PNG compression, for interactive updates."""
    if trace.preview_weight is None or of not in ("x0", "latents"):
        trace.preview(step, of=of)  # raises the error that says what to do instead
    scale = min(1.0, PREVIEW_SIDE / max(trace.height, trace.width))
    size = (max(1, round(trace.height * scale)), max(1, round(trace.width * scale)))
    latents = (trace.x0 if of == "x0" else trace.latents)[step]
    return png_uri(preview(latents, trace.preview_weight, size), PREVIEW_SIDE, 1 if fast else 6)


def image_trace(trace: Trace, uri: str, name: str) -> go.Image:
    """A go.Image of a PNG from ``png_uri`` stretched over the trace's image in pixel coordinates.
    Frames that swap its ``source`` must keep the PNG's size."""
    header = base64.b64decode(uri.split(",", 1)[1][:32])  # PNG signature, then IHDR: width at bytes 16..20
    scale = trace.width / int.from_bytes(header[16:20], "big")
    return go.Image(source=uri, x0=(scale - 1) / 2, y0=(scale - 1) / 2, dx=scale, dy=scale, name=name,
                    hoverinfo="skip")


def final_image(trace: Trace, frame: int | None = None) -> torch.Tensor:
    """[H, W, 3] uint8: the pipeline's output image, or the preview of the last x0 when it had none; of a
    video, the output frame that latent frame ``frame`` ends on (default: the middle one)."""
    image = trace.image if trace.image is not None else trace.preview(-1)
    if not trace.is_video:
        return image
    k = trace.num_frames // 2 if frame is None else frame
    return image[trace.output_frames_of(k)[-1]] if trace.image is not None else image[k]


def heat_size(trace: Trace) -> tuple[int, int]:
    """(h, w) at which heat maps are stored: the attention grid (the browser smooths them to the
    image); upsampling here would only add bytes."""
    return heatmap.grid(trace)


def heat_trace(trace: Trace, z: torch.Tensor | np.ndarray, *, opacity: float = 0.6, zmax: float = 1.0,
               colorscale: str = HEAT_COLORS, showscale: bool = False, name: str = "heat map") -> go.Heatmap:
    """A go.Heatmap of ``z`` [h, w] (any resolution) laid over the trace's image pixels, smoothed
    bilinearly by the browser."""
    z = np.asarray(z, dtype=np.float32)
    dy, dx = trace.height / z.shape[0], trace.width / z.shape[1]
    return go.Heatmap(z=z, x0=dx / 2 - 0.5, dx=dx, y0=dy / 2 - 0.5, dy=dy, zmin=0, zmax=zmax,
                      colorscale=colorscale, opacity=opacity, showscale=showscale, name=name, zsmooth="best",
                      hovertemplate="x %{x:.0f} px, y %{y:.0f} px<br>attention %{z:.3f}<extra></extra>")


def image_axes(fig: go.Figure, trace: Trace, row: int | None = None, col: int | None = None) -> None:
    """Image-pixel axes for an image subplot (see ``pixel_axes``)."""
    pixel_axes(fig, trace.height, trace.width, row, col)


def pixel_axes(fig: go.Figure, h: int, w: int, row: int | None = None, col: int | None = None) -> None:
    """Axes for an [h, w] picture: fixed range, y down, square cells, no ticks. No row/col: every axis."""
    kw = {} if row is None else dict(row=row, col=col)
    anchor = "x" if row is None else "x" + fig.get_subplot(row, col).xaxis.plotly_name.removeprefix("xaxis")
    fig.update_xaxes(range=[-0.5, w - 0.5], showticklabels=False, showgrid=False, zeroline=False,
                     constrain="domain", **kw)
    fig.update_yaxes(range=[h - 0.5, -0.5], showticklabels=False, showgrid=False, zeroline=False,
                     scaleanchor=anchor, scaleratio=1, constrain="domain", **kw)


# ---- heat maps over steps ----------------------------------------------------------------------------
def step_maps(trace: Trace, words: str | int | Sequence[str | int], *, layers=None, heads=None,
              uncond: bool = False) -> torch.Tensor:
    """[step, h, w] float32 on the attention grid: the words' attention at every step (unnormalised,
    attention probability), so one colour scale over all steps shows when a word is strong."""
    idx = trace.token_indices(words)
    return heatmap.per_step(trace, idx, trace.step_indices(), trace.layer_names(layers), heads, uncond)


# ---- labels --------------------------------------------------------------------------------------------
def step_label(trace: Trace, step: int) -> str:
    return f"step {step} (t={float(trace.timesteps[step]):g})"


def step_tick(trace: Trace) -> int:
    """Distance between step ticks on a step axis: whole steps, about ten ticks."""
    return max(1, -(-trace.num_steps // 10))


def word_labels(trace: Trace) -> list[str]:
    """One label per entry of ``trace.words``; a repeated word names its occurrence ("a", "a (2nd)")."""
    seen: dict[str, int] = {}
    out = []
    for w in trace.words:
        seen[w] = n = seen.get(w, 0) + 1
        suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
        out.append(w if n == 1 else f"{w} ({n}{suffix})")
    return out


def words_title(trace: Trace, words: str | int | Sequence[str | int]) -> str:
    picked = [words] if isinstance(words, (str, int)) else list(words)
    labels = word_labels(trace)
    return " + ".join(f"“{labels[w]}”" if isinstance(w, int) else f"“{w}”" for w in picked)


def default_word(trace: Trace) -> int:
    """Index of the word that receives the most attention over the whole generation."""
    return int(heatmap.word_mass(trace).sum(0).argmax())


# ---- animation -------------------------------------------------------------------------------------------
def animate(fig: go.Figure, frames: list[go.Frame], duration_ms: int = 300, active: int = 0,
            prefix: str = "step ") -> go.Figure:
    """Attach ``frames`` (one per step, named "0", "1", ...) with a slider (its value shown after ``prefix``)
    and a play/pause button;
    the slider starts at frame ``active`` (the figure's own data must show that frame).
    A frame may carry a ``layout`` (e.g. a title naming the timestep) that is applied with it."""
    fig.frames = frames
    start = min(0.5, 240 / (fig.layout.width or 700))  # leave room for the two buttons
    play = dict(frame=dict(duration=duration_ms, redraw=True), fromcurrent=True, transition=dict(duration=0))
    still = dict(frame=dict(duration=0, redraw=True), mode="immediate", transition=dict(duration=0))
    fig.update_layout(
        updatemenus=[dict(type="buttons", direction="left", x=0, y=0, xanchor="left", yanchor="top",
                          pad=dict(t=45, r=10), showactive=False, buttons=[
                              dict(label="▶ play", method="animate", args=[None, play]),
                              dict(label="❚❚ pause", method="animate", args=[[None], still])])],
        sliders=[dict(active=active, x=start, len=1 - start, y=0, yanchor="top", pad=dict(t=30),
                      currentvalue=dict(prefix=prefix, visible=True, xanchor="left"),
                      steps=[dict(label=f.name, method="animate", args=[[f.name], still]) for f in frames])],
    )
    return fig
