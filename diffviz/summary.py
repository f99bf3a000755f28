"""Trace summaries (``.dvs``): what a many-prompt study needs from one generation, at a fraction of a
trace's size.

Per word, one attention map per resolution for each of a few step windows (conditional half, mean
over heads and over that resolution's layers, summed over the word's subword tokens, averaged over
the window's steps: units of attention probability, not normalised), plus the image (at most
``MAX_IMAGE_SIDE`` px a side) and the final predicted x0 latents with the trace's linear preview map.
One safetensors file with JSON metadata and a format version, written atomically (as trace files).
Maps are stored as 8-bit fractions of each map's own maximum (error at most 1/510 of that maximum).
A summary has a byte budget (``MAX_BYTES``: 1 MB with its header): when 8-bit maps would exceed it (an
SDXL prompt of more than about 40 words), they are stored at 4 bits (error at most 1/30 of the maximum,
``bits`` in the file), which keeps every SDXL prompt (75 words at most) under 1 MB
(``benchmarks/summary_size.py``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__, heatmap
from .decode import preview
from .io import TraceFileError, read_file, write_file
from .select import find_word
from .traces import Trace

FORMAT = "diffviz-summary"
FORMAT_VERSION = 2  # 2: maps at 8 or 4 bits ("bits")
SUFFIX = ".dvs"
DEFAULT_WINDOWS = 3  # early (layout), middle, late (detail)
MAX_IMAGE_SIDE = 256  # px; larger images are stored area-downscaled (a 1024 px SDXL image would be 3 MB)
MAX_BYTES = 984_000  # a summary's tensors (1 MB less room for the JSON header); over it, maps at 4 bits
BITS = (8, 4)  # map precisions, finest first


@dataclass
class Summary:
    """One generation, summarised. ``windows[k] = (start, stop)`` are step ranges, stop exclusive."""

    prompt: str
    negative_prompt: str | None
    words: list[str]
    windows: list[tuple[int, int]]
    maps: dict[str, torch.Tensor]  # resolution "hxw" -> [window, word, h, w] float32 attention probability
    layer_counts: dict[str, int]  # resolution -> how many prompt-reading layers its maps average
    height: int  # generated image, px
    width: int
    guidance_scale: float
    timesteps: torch.Tensor  # [step] float32, the scheduler's t
    x0: torch.Tensor  # [C, h, w] float16 predicted clean latents at the last step
    image: torch.Tensor | None = None  # [H', W', 3] uint8, the image (downscaled when over MAX_IMAGE_SIDE)
    preview_weight: torch.Tensor | None = None  # [3, C + 1] latent (and bias) -> RGB in [0, 1]
    model: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    bits: int = 8  # precision of the stored maps: levels of each map's maximum, 2**bits - 1 of them

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        """The common grid (the largest map), (h, w) in latent cells."""
        return max((tuple(m.shape[-2:]) for m in self.maps.values()), key=lambda s: s[0] * s[1])

    def word_maps(self, window: int | None = None) -> torch.Tensor:
        """[word, h, w] float32 on the common grid: mean over every layer (as ``Trace.heatmap``) and over
        the steps of ``window`` (None: all steps). Unnormalised."""
        n_layers = sum(self.layer_counts.values())
        if window is None:
            lengths = torch.tensor([b - a for a, b in self.windows], dtype=torch.float32)
            weights = lengths / lengths.sum()
        else:
            weights = torch.zeros(len(self.windows))
            weights[window] = 1.0
        total = 0
        for res, maps in self.maps.items():
            timed = torch.einsum("k,kwhx->whx", weights, maps.float())
            total = total + self.layer_counts[res] * heatmap.upsample(timed, self.grid)
        return total / n_layers

    def heatmap(self, word: str | int, window: int | None = None, size: tuple[int, int] | None = None,
                normalize: bool = True) -> torch.Tensor:
        """[H, W] float32 map of ``word`` (every occurrence) over ``window`` (None: all steps) at image
        size (or ``size``); in [0, 1] when normalised. Matches ``Trace.word_heatmap(word, steps=...)``."""
        idx = find_word(self.words, self.prompt, word)
        if window is not None and not -len(self.windows) <= window < len(self.windows):
            raise IndexError(f"window {window} is out of range: this summary has {len(self.windows)} "
                             f"windows {self.windows}.")
        out = heatmap.upsample(self.word_maps(window)[idx].sum(0), size or (self.height, self.width))
        return heatmap.normalize(out) if normalize else out

    def preview(self) -> torch.Tensor:
        """[H, W, 3] uint8 linear preview of the final predicted x0, no VAE needed."""
        if self.preview_weight is None:
            raise ValueError("this summary has no preview map (the pipeline never decoded an image).")
        return preview(self.x0, self.preview_weight, (self.height, self.width))

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors (the file adds a few kB of metadata)."""
        tensors = [self.timesteps, self.x0, self.image, self.preview_weight]
        stored = sum(_map_bytes(m.shape, self.bits) for m in self.maps.values())
        return stored + sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def save(self, path: str | Path) -> Path:
        """Write the summary to ``path`` (safetensors with JSON metadata), atomically; returns the path."""
        tensors = {"timesteps": self.timesteps, "x0": self.x0}
        optional = (("image", self.image), ("preview_weight", self.preview_weight))
        tensors |= {k: v for k, v in optional if v is not None}
        for res, m in self.maps.items():
            tensors[f"maps/{res}"], tensors[f"scale/{res}"] = _pack(*_quantize(m, self.bits), self.bits)
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "diffviz_version": __version__,
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "words": self.words,
            "windows": [list(w) for w in self.windows], "layer_counts": self.layer_counts,
            "height": self.height, "width": self.width, "guidance_scale": self.guidance_scale,
            "model": self.model, "scheduler": self.scheduler, "options": self.options, "bits": self.bits,
        }
        return write_file(path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta)


def windows_of(num_steps: int,
               windows: int | Sequence[tuple[int, int]] = DEFAULT_WINDOWS) -> list[tuple[int, int]]:
    """Step windows ``[(start, stop)]``: ``windows`` near-equal consecutive ranges covering every step
    (fewer when there are fewer steps), or the given ranges, checked."""
    if isinstance(windows, int):
        if windows < 1:
            raise ValueError(f"windows must be 1 or more, not {windows}.")
        k = min(windows, num_steps)
        bounds = [round(i * num_steps / k) for i in range(k + 1)]
        return list(itertools.pairwise(bounds))
    out = [(int(a), int(b)) for a, b in windows]
    for a, b in out:
        if not 0 <= a < b <= num_steps:
            raise ValueError(f"step window ({a}, {b}) is not inside the {num_steps} steps: give "
                             f"(start, stop) with 0 <= start < stop <= {num_steps}.")
    return out


@torch.no_grad()
def summarize(trace: Trace, windows: int | Sequence[tuple[int, int]] = DEFAULT_WINDOWS,
              max_image_side: int = MAX_IMAGE_SIDE, max_bytes: int = MAX_BYTES) -> Summary:
    """The ``Summary`` of ``trace``: per word, one map per resolution for each step window
    (``windows``: how many equal ones, or ``[(start, stop)]``), the image and the final x0. Maps are
    kept at 8 bits, or at 4 when 8 would pass ``max_bytes`` (with a warning if even 4 do)."""
    if trace.num_steps == 0:
        raise ValueError("this trace is empty (no generation ran inside its `with diffviz.trace(pipe)` "
                         "block).")
    if trace.is_video:
        raise ValueError("summaries hold an image's maps; keep a video's full trace (diffviz batch --keep "
                         "full), or summarise one of its frames: summarize(trace.frame(k)).")
    spans = windows_of(trace.num_steps, windows)
    # [token, word] one-hot: sums each word's subword tokens
    onehot = torch.zeros(len(trace.tokens), len(trace.words))
    for i, t in enumerate(trace.tokens):
        if t.word is not None:
            onehot[i, t.word] = 1.0
    maps: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for res in dict.fromkeys(l.resolution for l in trace.layers):
        names = [l.name for l in trace.layers if l.resolution == res]
        # [step, token, h, w]: head mean of each layer, then mean over this resolution's layers
        per_step = torch.stack([trace.attn[n].float().mean(1) for n in names]).mean(0)
        by_word = torch.einsum("sthw,tv->svhw", per_step, onehot)
        maps[res] = torch.stack([by_word[a:b].mean(0) for a, b in spans])
        counts[res] = len(names)
    s = Summary(
        prompt=trace.prompt, negative_prompt=trace.negative_prompt, words=list(trace.words), windows=spans,
        maps=maps, layer_counts=counts, height=trace.height, width=trace.width,
        guidance_scale=trace.guidance_scale, timesteps=trace.timesteps.float(), x0=trace.x0[-1].half(),
        image=None if trace.image is None else _shrink(trace.image, max_image_side),
        preview_weight=trace.preview_weight, model=dict(trace.model), scheduler=dict(trace.scheduler),
        options=dict(trace.options),
    )
    for bits in BITS:  # the finest precision within the budget
        s.bits = bits
        if s.nbytes <= max_bytes:
            break
    else:
        warnings.warn(f"this summary holds {s.nbytes / 1e6:.2f} MB with maps at {s.bits} bits, over "
                      f"max_bytes={max_bytes / 1e6:.2f} MB ({len(trace.words)} words); fewer windows or a "
                      "smaller max_image_side shrink it.", stacklevel=2)
    s.maps = {res: _dequantize(*_quantize(m, s.bits), s.bits) for res, m in maps.items()}  # as stored
    return s


def _shrink(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """[H, W, 3] uint8, area-downscaled so that neither side exceeds ``max_side`` (unchanged if it fits)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image.clone()
    from PIL import Image

    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = Image.fromarray(image.numpy()).resize(size, Image.BOX)
    return torch.from_numpy(np.asarray(small).copy())


def _quantize(maps: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., h, w] float -> ([..., h, w] uint8 in 0..2**bits - 1, levels of each map's max;
    [...] float32 max)."""
    top = maps.float().clamp_min(0).amax(dim=(-2, -1))
    levels = 2**bits - 1
    q = (maps.float().clamp_min(0) / top.clamp_min(1e-30)[..., None, None] * levels).round().to(torch.uint8)
    return q, top


def _dequantize(q: torch.Tensor, top: torch.Tensor, bits: int) -> torch.Tensor:
    return q.float() * (top / (2**bits - 1))[..., None, None]


def _pack(q: torch.Tensor, top: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit levels two to a byte along the last axis (a zero level pads an odd width); 8-bit as is."""
    if bits == 8:
        return q, top
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    return q[..., 0::2] << 4 | q[..., 1::2], top


def _unpack(stored: torch.Tensor, top: torch.Tensor, bits: int, width: int) -> torch.Tensor:
    """Inverse of ``_pack`` then ``_dequantize``: [..., h, width] float32."""
    if bits == 4:
        stored = torch.stack([stored >> 4, stored & 0xF], -1).flatten(-2)[..., :width]
    return _dequantize(stored, top, bits)


def _map_bytes(shape: Sequence[int], bits: int) -> int:
    """Stored bytes of maps of ``shape`` [..., h, w]: the packed levels and a float32 max per map."""
    n_maps = math.prod(shape[:-2])
    return n_maps * (shape[-2] * math.ceil(shape[-1] * bits / 8) + 4)


def load_summary(path: str | Path) -> Summary:
    """Read a summary written by ``Summary.save``. Raises TraceFileError for a file that is truncated,
    edited, of another format version, or not a summary."""
    meta, tensors = read_file(path, FORMAT, FORMAT_VERSION, "summary")
    try:
        return Summary(
            prompt=meta["prompt"], negative_prompt=meta["negative_prompt"], words=meta["words"],
            windows=[tuple(w) for w in meta["windows"]],
            maps={res: _unpack(tensors[f"maps/{res}"], tensors[f"scale/{res}"], meta["bits"],
                               int(res.split("x")[1]))
                  for res in (k.removeprefix("maps/") for k in tensors if k.startswith("maps/"))},
            layer_counts=meta["layer_counts"], height=meta["height"], width=meta["width"],
            guidance_scale=meta["guidance_scale"], timesteps=tensors["timesteps"], x0=tensors["x0"],
            image=tensors.get("image"), preview_weight=tensors.get("preview_weight"), model=meta["model"],
            scheduler=meta["scheduler"], options=meta["options"], bits=meta["bits"],
        )
    except (KeyError, TypeError, ValueError) as err:  # intact but incomplete: written by another program
        raise TraceFileError(f"{str(path)!r} is missing part of a summary ({type(err).__name__}: {err}); "
                             "it was not written by Summary.save.") from None


def estimate_bytes(n_words: int, map_sizes: Sequence[tuple[int, int]], latent: tuple[int, int, int],
                   image: tuple[int, int], num_steps: int, windows: int = DEFAULT_WINDOWS,
                   max_image_side: int = MAX_IMAGE_SIDE, bits: int = 8) -> int:
    """Bytes of a summary's tensors, from shapes alone: ``map_sizes`` one (h, w) per attention resolution,
    ``latent`` (C, h, w), ``image`` (H, W) px, maps at ``bits``. The file adds the JSON header (a few kB)."""
    k = min(windows, num_steps)
    scale = min(1.0, max_image_side / max(image))
    h, w = max(1, round(image[0] * scale)), max(1, round(image[1] * scale))
    c = latent[0]
    return (sum(_map_bytes((k, n_words, a, b), bits) for a, b in map_sizes) + 2 * c * latent[1] * latent[2]
            + 3 * h * w + 4 * 3 * (c + 1) + 4 * num_steps)
