"""Regions of an image: a box or a mask as pixel weights, pooled to an attention grid.

Shared by attribution (which region's prediction to explain), edits (where to steer a word) and the
classroom trainer's grounding loss (where a word's object is),
so that none of them imports another's dependencies (captum, the capture).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import heatmap

if TYPE_CHECKING:
    from .traces import Trace

# A box (x0, y0, x1, y1) in image pixels (x right, y down, end exclusive), or a [H, W] mask/weights.
Region = tuple[float, float, float, float] | torch.Tensor | None


def region_mask(region: Region, height: int, width: int) -> torch.Tensor:
    """[H, W] float32 weights in [0, 1] for a box (pixels, end exclusive), a mask, or None (everywhere)."""
    if region is None:
        return torch.ones(height, width)
    if isinstance(region, torch.Tensor) or hasattr(region, "__array__") and not isinstance(region, tuple):
        mask = torch.as_tensor(region).float()
        if tuple(mask.shape) != (height, width):
            raise ValueError(f"a region mask must be [H, W] = [{height}, {width}] (image pixels), "
                             f"got {list(mask.shape)}.")
        if not mask.any():
            raise ValueError("the region mask is empty; mark at least one pixel.")
        return mask
    if len(region) != 4:
        raise ValueError(f"a region box is (x0, y0, x1, y1) in pixels, got {region!r}.")
    x0, y0, x1, y1 = (float(v) for v in region)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {region!r} is not inside the {width}x{height} image (x0 < x1 <= {width}, "
                         f"y0 < y1 <= {height}).")
    # fractional coverage of each pixel, so a box smaller than a pixel grid cell still counts
    xs, ys = torch.arange(width).float(), torch.arange(height).float()
    cx = ((xs + 1).clamp(max=x1) - xs.clamp(min=x0)).clamp(min=0)
    cy = ((ys + 1).clamp(max=y1) - ys.clamp(min=y0)).clamp(min=0)
    return cy[:, None] * cx[None, :]


def pool(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[H, W] pixel weights -> [h, w] weights on a coarser grid (area average, so values stay in [0, 1])."""
    return F.adaptive_avg_pool2d(mask[None, None].float(), size)[0, 0]


def region_attention(trace: Trace, region: Region = None, *, steps=None,
                     layers=None) -> torch.Tensor:
    """[word] float32: each word's mean attention probability inside ``region`` (over ``steps`` and
    ``layers``; all when None), on the trace's attention grid."""
    grid = heatmap.grid(trace)
    w = pool(region_mask(region, trace.height, trace.width), grid)
    w = w / w.sum()
    steps, layers = trace.step_indices(steps), trace.layer_names(layers)
    out = torch.zeros(len(trace.words))
    for i in range(len(trace.words)):
        maps = heatmap.per_step(trace, trace.token_indices(i), steps, layers).mean(0)  # [h, w]
        out[i] = (maps * w).sum()
    return out
