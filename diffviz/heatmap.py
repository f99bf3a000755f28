"""Heat-map maths: attention maps of several layers, steps, heads and tokens made into one picture.

The default recipe follows DAAM (Tang et al., 2023) in spirit: every layer's head mean, summed over
a word's subword tokens, is brought bilinearly to a common grid, averaged over layers (each layer
equal) and steps, upsampled to the image and normalised. Averaging over steps happens before
upsampling (both are linear), so a heat map costs one interpolation per layer. ``daam`` is DAAM
0.2's own weighting, exactly (README, "What a Trace holds").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .traces import Trace


def grid(trace: Trace) -> tuple[int, int]:
    """The common grid: the largest attention map of the trace, (h, w) in latent cells (a video's maps keep
    their frame axis: its layers share one)."""
    return max((l.size[-2:] for l in trace.layers), key=lambda s: s[0] * s[1])


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """[..., h, w] -> [..., *size] float32, bilinear (or ``mode``, e.g. "bicubic")."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    if tuple(flat.shape[-2:]) != tuple(size):
        flat = F.interpolate(flat, size=size, mode=mode, align_corners=False)
    return flat.reshape(*lead, *size)


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Min-max over the last two axes to [0, 1]; a constant map becomes zeros."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-12), torch.zeros_like(maps))


def per_step(trace: Trace, token_idx: Sequence[int], steps: Sequence[int], layers: Sequence[str],
             heads: int | Sequence[int] | None = None, uncond: bool = False) -> torch.Tensor:
    """[step, h, w] float32 on the common grid ([step, frame, h, w] for a video): summed over ``token_idx``,
    mean over heads and ``layers``, for each of ``steps``. Unnormalised (units: attention probability)."""
    store = trace.attn_uncond if uncond else trace.attn
    if uncond and not store:
        raise ValueError("this trace holds no unconditional attention; capture with "
                         "diffviz.trace(pipe, uncond=True).")
    if not token_idx:
        raise ValueError("no tokens selected.")
    # upsampling is linear: layers with maps of one size are summed first, then upsampled once
    by_size: dict[tuple[int, int], torch.Tensor] = {}
    for name in layers:
        # [step, head, token, h, w]; picking the tokens first copies less
        maps = store[name][:, :, list(token_idx)][list(steps)]
        if heads is not None:
            maps = maps[:, head_indices(trace, maps.shape[1], heads)]
        m = maps.float().sum(2).mean(1)  # [step, (frame,) h, w]
        key = tuple(m.shape[1:])
        by_size[key] = by_size[key] + m if key in by_size else m
    total = sum(upsample(m, grid(trace)) for m in by_size.values()) / len(layers)
    if trace.is_video and total.shape[1] != trace.num_frames:  # a token spans latent frames (patch_size_t)
        total = total.repeat_interleave(trace.num_frames // total.shape[1], dim=1)
    return total


def daam_grid(trace: Trace) -> tuple[int, int]:
    """DAAM 0.2's common grid: 64x64 when the image is 512 px high, else 96x96 (its two SD 2 cases)."""
    side = 64 if trace.height == 512 else 96
    return side, side


def daam_layers(trace: Trace, layers: Sequence[str]) -> list[str]:
    """The layers of ``layers`` DAAM 0.2 hooks: ``attn2`` modules outside the mid block, except those
    whose maps are 8 times coarser than its grid (its ``factor != 8`` rule)."""
    cells = math.prod(daam_grid(trace))
    by_name = {l.name: l for l in trace.layers}
    return [n for n in layers if n.endswith("attn2") and by_name[n].block != "mid"
            and int(math.sqrt(cells // math.prod(by_name[n].size))) != 8]


def daam(trace: Trace, token_idx: Sequence[int], steps: Sequence[int], layers: Sequence[str],
         heads: int | Sequence[int] | None = None, uncond: bool = False) -> torch.Tensor:
    """[*daam_grid] float32, unnormalised: DAAM 0.2's aggregate (``trace.compute_global_heat_map`` then
    ``compute_word_heat_map``). Over ``daam_layers``: each (layer, head) map, averaged over ``steps``,
    upsampled bicubically to ``daam_grid`` and clamped at 0 per token; the mean over every (layer,
    head) pair, so a layer with more heads weighs more; the mean over ``token_idx``. With the head
    mean stored, a layer's mean stands for its heads (weight: its head count; exact up to the clamp)."""
    store = trace.attn_uncond if uncond else trace.attn
    picked = daam_layers(trace, layers)
    if not picked:
        raise ValueError(f"none of the layers {list(layers)} is one DAAM reads (attn2 outside the mid block, "
                         "maps at least 1/4 of its grid's side); select other layers or recipe='diffviz'.")
    if not token_idx:
        raise ValueError("no tokens selected.")
    size = daam_grid(trace)
    heads_of = {l.name: l.heads for l in trace.layers}
    total, pairs = torch.zeros(size), 0
    for name in picked:
        maps = store[name][:, :, list(token_idx)][list(steps)].float().mean(0)  # [head, token, h, w]
        if heads is not None:
            maps = maps[head_indices(trace, maps.shape[0], heads)]
        weight = heads_of[name] if maps.shape[0] == 1 and heads is None else 1  # a head mean stands for all
        up = F.interpolate(maps, size=size, mode="bicubic", align_corners=False).clamp_(min=0)
        total += weight * up.mean(1).sum(0)  # mean over tokens, summed over heads
        pairs += weight * maps.shape[0]
    return total / pairs


def head_indices(trace: Trace, stored: int, heads: int | Sequence[int]) -> list[int]:
    """Indices into a stored head axis of ``stored`` heads for ``heads`` (one or several); ValueError when
    the trace keeps only the head mean, or a head is out of range."""
    picked = [heads] if isinstance(heads, int) else list(heads)
    if not trace.options.get("heads"):
        raise ValueError("this trace stores the mean over heads; capture with "
                         "diffviz.trace(pipe, heads=True) to select heads.")
    bad = [h for h in picked if not 0 <= h < stored]
    if bad:
        raise IndexError(f"heads {bad} are out of range: these layers have {stored} heads (0..{stored - 1}).")
    return picked


def word_mass(trace: Trace, layers: Sequence[str] | None = None) -> torch.Tensor:
    """[step, word] float32: mean attention probability each word receives at each step,
    averaged over pixels, heads and ``layers`` (every layer when None)."""
    layers = list(layers or trace.attn)
    steps = range(trace.num_steps)
    out = torch.zeros(trace.num_steps, len(trace.words))
    for w in range(len(trace.words)):
        idx = [i for i, t in enumerate(trace.tokens) if t.word == w]
        out[:, w] = per_step(trace, idx, steps, layers).flatten(1).mean(1)
    return out


def word_share(trace: Trace, layers: Sequence[str] | None = None) -> torch.Tensor:
    """[step, word] float32 in percent: each word's share of the attention all prompt words receive
    at each step (``word_mass`` normalised per step; the start and end tokens are left out)."""
    mass = word_mass(trace, layers)
    return 100 * mass / mass.sum(1, keepdim=True).clamp_min(1e-12)


def layer_step(trace: Trace, word: str | int) -> torch.Tensor:
    """[layer, step] float32: mean attention probability of ``word`` per layer and step (rows in
    ``trace.layers`` order): where in the U-Net, and when, a word acts."""
    idx = trace.token_indices(word)
    rows = [trace.attn[l.name][:, :, idx].float().sum(2).flatten(1).mean(1) for l in trace.layers]
    return torch.stack(rows)
