"""Static pictures (PIL images) of a Trace: they show in any notebook viewer, GitHub included,
where plotly figures and widgets need a live kernel or JavaScript.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..decode import decode
from ..traces import Trace


@functools.lru_cache(maxsize=1)
def _inferno() -> np.ndarray:
    """[256, 3] uint8 lookup table of plotly's Inferno colour scale (the figures' heat colours)."""
    from plotly.colors import sample_colorscale

    rgb = sample_colorscale("Inferno", list(np.linspace(0, 1, 256)), colortype="tuple")
    return (np.asarray(rgb) * 255 if max(map(max, rgb)) <= 1 else np.asarray(rgb)).round().astype(np.uint8)


def colorize(heat: torch.Tensor | np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> [H, W, 3] uint8 in the Inferno colour scale."""
    idx = (np.clip(np.asarray(heat, dtype=np.float32), 0, 1) * 255).round().astype(np.int64)
    return _inferno()[idx]


def overlay(trace: Trace, word: str | int, *, alpha: float = 0.6, image: torch.Tensor | None = None,
            **selection) -> np.ndarray:
    """[H, W, 3] uint8: ``word``'s heat map blended over the trace's image (or ``image``);
    ``selection`` goes to ``Trace.heatmap`` (steps, layers, heads, ...)."""
    base = (image if image is not None else trace.image).numpy().astype(np.float32)
    heat = colorize(trace.heatmap(word, **selection)).astype(np.float32)
    return ((1 - alpha) * base + alpha * heat).round().astype(np.uint8)


def strip(images: Sequence[torch.Tensor | np.ndarray], *, scale: int = 4, gap: int = 2) -> Image.Image:
    """Images [H, W, 3] uint8 side by side, each enlarged ``scale`` times (nearest), on white."""
    arrays = [np.repeat(np.repeat(np.asarray(a, dtype=np.uint8), scale, 0), scale, 1) for a in images]
    h = max(a.shape[0] for a in arrays)
    out = np.full((h, sum(a.shape[1] for a in arrays) + gap * (len(arrays) - 1), 3), 255, np.uint8)
    x = 0
    for a in arrays:
        out[: a.shape[0], x: x + a.shape[1]] = a
        x += a.shape[1] + gap
    return Image.fromarray(out)


def word_strip(trace: Trace, words: Sequence[str | int] | None = None, **kwargs) -> Image.Image:
    """The image, then each word's heat map over it (every word of the prompt by default)."""
    words = list(words) if words is not None else list(range(len(trace.words)))
    return strip([trace.image] + [overlay(trace, w) for w in words], **kwargs)


def denoising_strip(trace: Trace, n: int = 6, *, of: str = "x0", vae: torch.nn.Module | None = None,
                    **kwargs) -> Image.Image:
    """``of`` ("x0" or "latents") at ``n`` evenly spaced steps, first to last: decoded by ``vae`` (the
    pipeline's, true colours) when given, else the trace's fast linear preview (no model needed)."""
    steps = np.linspace(0, trace.num_steps - 1, n).round().astype(int)
    if vae is None:
        return strip([trace.preview(int(s), of=of) for s in steps], **kwargs)
    latents = {"x0": trace.x0, "latents": trace.latents}[of]
    with torch.no_grad():
        return strip([decode(vae, latents[int(s)]) for s in steps], **kwargs)
