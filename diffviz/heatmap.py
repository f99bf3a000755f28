"""Heat-map maths: attention maps of several layers, steps, heads and tokens made into one picture.

The recipe follows DAAM (Tang et al., 2023): every layer's map is brought to a common grid,
averaged over layers, heads and steps, summed over a word's subword tokens, upsampled to the
image and normalised. Averaging over steps happens before upsampling (both are linear), so a
heat map costs one interpolation per layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .trace import Trace


def grid(trace: Trace) -> tuple[int, int]:
    """The common grid: the largest attention map of the trace, (h, w) in latent cells."""
    return max((l.size for l in trace.layers), key=lambda s: s[0] * s[1])


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[..., h, w] -> [..., *size] float32, bilinear."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    if tuple(flat.shape[-2:]) != tuple(size):
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return flat.reshape(*lead, *size)


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Min-max over the last two axes to [0, 1]; a constant map becomes zeros."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-12), torch.zeros_like(maps))


def per_step(trace: Trace, token_idx: Sequence[int], steps: Sequence[int], layers: Sequence[str],
             heads: int | Sequence[int] | None = None, uncond: bool = False) -> torch.Tensor:
    """[step, h, w] float32 on the common grid: summed over ``token_idx``, mean over heads and
    ``layers``, for each of ``steps``. Unnormalised (units: attention probability)."""
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
            maps = maps[:, _head_indices(trace, maps.shape[1], heads)]
        m = maps.float().sum(2).mean(1)  # [step, h, w]
        key = tuple(m.shape[-2:])
        by_size[key] = by_size[key] + m if key in by_size else m
    total = sum(upsample(m, grid(trace)) for m in by_size.values())
    return total / len(layers)


def _head_indices(trace: Trace, stored: int, heads: int | Sequence[int]) -> list[int]:
    picked = [heads] if isinstance(heads, int) else list(heads)
    if not trace.options.get("heads"):
        raise ValueError("this trace stores the mean over heads; capture with diffviz.trace(pipe, heads=True) "
                         "to select heads.")
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
        out[:, w] = per_step(trace, idx, steps, layers).mean(dim=(-2, -1))
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
    rows = [trace.attn[l.name][:, :, idx].float().sum(2).mean(dim=(1, -2, -1)) for l in trace.layers]
    return torch.stack(rows)
