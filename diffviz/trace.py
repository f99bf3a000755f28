"""The Trace: everything one traced generation captured, indexed by step, layer and token.

Capture writes it, everything else reads it. It holds only CPU tensors and plain metadata (never
the model), so a trace made on a GPU opens on a laptop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from . import heatmap
from .decode import decode, preview

Steps = int | slice | Sequence[int] | None
Layers = str | Sequence[str] | None


@dataclass(frozen=True)
class Token:
    """One tokenizer unit. ``position`` indexes the text encoder's context (0 is the start token)."""

    position: int
    text: str  # as the tokenizer spells it, e.g. "circle</w>"
    word: int | None  # index into Trace.words; None for start, end and padding tokens


@dataclass(frozen=True)
class Layer:
    """One cross-attention (``attn2``) module of the U-Net."""

    name: str  # module path, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    size: tuple[int, int]  # (h, w) of its attention maps, in latent cells
    heads: int  # attention heads of the module (the stored head axis may be 1: the mean)

    @property
    def resolution(self) -> str:
        return f"{self.size[0]}x{self.size[1]}"


@dataclass
class Trace:
    """One traced generation. Shapes use ``step`` for the denoising loop index, C/h/w for latents."""

    prompt: str
    negative_prompt: str | None
    words: list[str]
    tokens: list[Token]  # the tokens whose attention is stored, in stored order
    layers: list[Layer]
    height: int  # generated image, pixels
    width: int
    guidance_scale: float
    timesteps: torch.Tensor  # [step] the scheduler's t
    alpha_bar: torch.Tensor  # [step] cumulative signal fraction at t, in (0, 1]
    sigma: torch.Tensor  # [step] noise-to-signal ratio sqrt((1 - alpha_bar) / alpha_bar)
    latents: torch.Tensor  # [step + 1, C, h, w] latents[i] before step i, latents[i + 1] after it
    x0: torch.Tensor  # [step, C, h, w] predicted clean latents at each step
    noise_cond: torch.Tensor  # [step, C, h, w] conditional noise prediction, before guidance
    noise_uncond: torch.Tensor | None  # [step, C, h, w] unconditional one; None without guidance
    attn: dict[str, torch.Tensor]  # layer name -> [step, head, token, h, w] probabilities
    attn_uncond: dict[str, torch.Tensor] = field(default_factory=dict)  # same, unconditional half
    image: torch.Tensor | None = None  # [H, W, 3] uint8, the pipeline's output image
    preview_weight: torch.Tensor | None = None  # [3, C + 1] latent (and bias) -> RGB in [0, 1]
    model: dict = field(default_factory=dict)  # name, pipeline class, config hash
    scheduler: dict = field(default_factory=dict)  # class name and config
    options: dict = field(default_factory=dict)  # how it was captured

    # ---- shape of the trace -------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def noise_guided(self) -> torch.Tensor:
        """[step, C, h, w] uncond + guidance_scale * (cond - uncond), the prediction the sampler used."""
        if self.noise_uncond is None:
            return self.noise_cond
        return self.noise_uncond + self.guidance_scale * (self.noise_cond - self.noise_uncond)

    @property
    def nbytes(self) -> int:
        """Bytes held by the trace's tensors (what a saved file costs, to a few kB of metadata)."""
        tensors = [self.timesteps, self.alpha_bar, self.sigma, self.latents, self.x0, self.noise_cond,
                   self.noise_uncond, self.image, self.preview_weight, *self.attn.values(), *self.attn_uncond.values()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def __repr__(self) -> str:
        kept = "all heads" if self.options.get("heads") else "head mean"
        return (
            f"Trace({self.prompt!r}, {self.num_steps} steps, {self.height}x{self.width} px, "
            f"{len(self.layers)} attn2 layers ({', '.join(sorted({l.resolution for l in self.layers}))}), "
            f"{len(self.tokens)} tokens, {kept}, guidance {self.guidance_scale:g})"
        )

    # ---- selections ---------------------------------------------------------------------------
    def step_indices(self, steps: Steps = None) -> list[int]:
        """Validate ``steps`` (int, slice, list, None = all; negative counts from the end)."""
        n = self.num_steps
        if steps is None:
            return list(range(n))
        if isinstance(steps, slice):
            return list(range(n))[steps]
        picked = [steps] if isinstance(steps, int) else list(steps)
        for s in picked:
            if not -n <= int(s) < n:
                raise IndexError(f"step {s} is out of range: this trace has {n} steps (0..{n - 1}).")
        return [int(s) % n for s in picked]

    def layer_names(self, layers: Layers = None) -> list[str]:
        """Layers by exact name, name prefix ("up_blocks.1"), block ("down", "mid", "up") or
        resolution ("16x16"). None selects every captured layer."""
        if layers is None:
            return [l.name for l in self.layers]
        wanted = [layers] if isinstance(layers, str) else list(layers)
        out: list[str] = []
        for w in wanted:
            hits = [l.name for l in self.layers
                    if l.name == w or l.name.startswith(w) or l.resolution == w
                    or (w in ("down", "mid", "up") and l.name.startswith(w))]
            if not hits:
                raise ValueError(
                    f"no captured layer matches {w!r}. Captured resolutions: "
                    f"{sorted({l.resolution for l in self.layers})}; layers: {[l.name for l in self.layers]}"
                )
            out += [h for h in hits if h not in out]
        return out

    def word_indices(self, word: str | int) -> list[int]:
        """Indices into ``words`` for a word (every occurrence, case-insensitive) or a word index."""
        if isinstance(word, int):
            if not 0 <= word < len(self.words):
                raise IndexError(f"word index {word} is out of range: the prompt has {len(self.words)} "
                                 f"words {self.words}.")
            return [word]
        hits = [i for i, w in enumerate(self.words) if w.lower() == str(word).lower().strip()]
        if not hits:
            raise KeyError(f"{word!r} is not a word of the prompt {self.prompt!r}; its words are {self.words}.")
        return hits

    def token_indices(self, words: str | int | Sequence[str | int] | None = None,
                      tokens: int | Sequence[int] | None = None) -> list[int]:
        """Indices into the stored token axis for ``words`` (all their subword tokens) and/or
        ``tokens`` (context positions, e.g. 0 for the start token). None for both: every word token."""
        if words is None and tokens is None:
            return [i for i, t in enumerate(self.tokens) if t.word is not None]
        picked: list[int] = []
        if words is not None:
            for w in [words] if isinstance(words, (str, int)) else words:
                wi = set(self.word_indices(w))
                picked += [i for i, t in enumerate(self.tokens) if t.word in wi]
        if tokens is not None:
            stored = {t.position: i for i, t in enumerate(self.tokens)}
            for p in [tokens] if isinstance(tokens, int) else tokens:
                if p not in stored:
                    raise KeyError(
                        f"token position {p} was not captured; stored positions are {sorted(stored)}. "
                        "Capture with diffviz.trace(pipe, tokens='all') to keep every position."
                    )
                picked.append(stored[p])
        return list(dict.fromkeys(picked))

    # ---- heat maps ----------------------------------------------------------------------------
    def heatmap(self, words: str | int | Sequence[str | int] | None = None, *,
                tokens: int | Sequence[int] | None = None, steps: Steps = None, layers: Layers = None,
                heads: int | Sequence[int] | None = None, uncond: bool = False,
                size: tuple[int, int] | None = None, normalize: bool = True) -> torch.Tensor:
        """[H, W] float32 attention heat map at image pixel size (or ``size``), averaged over the
        selected steps, layers and heads and summed over the selected tokens; in [0, 1] when normalised."""
        maps = heatmap.per_step(self, self.token_indices(words, tokens), self.step_indices(steps),
                                self.layer_names(layers), heads, uncond)
        out = heatmap.upsample(maps.mean(0), size or (self.height, self.width))
        return heatmap.normalize(out) if normalize else out

    def word_heatmap(self, word: str | int, **kwargs) -> torch.Tensor:
        """[H, W] float32 in [0, 1]: where ``word`` (every occurrence) sent its information."""
        return self.heatmap(word, **kwargs)

    # ---- images -------------------------------------------------------------------------------
    def preview(self, step: int, of: str = "x0") -> torch.Tensor:
        """[H, W, 3] uint8 fast linear preview of ``of`` ("x0" or "latents") at ``step``, no VAE needed.
        For "latents", ``step`` runs to ``num_steps`` (the final latents) and -1 is the last of them."""
        if self.preview_weight is None:
            raise ValueError("this trace has no preview map (the pipeline never decoded an image, e.g. "
                             "output_type='latent'); use trace.decode(step, vae=pipe.vae) instead.")
        return preview(self._latents_of(of, step), self.preview_weight, (self.height, self.width))

    def decode(self, step: int, vae: torch.nn.Module, of: str = "x0") -> torch.Tensor:
        """[H, W, 3] uint8: ``of`` at ``step`` decoded by the VAE (exact, slower than ``preview``)."""
        return decode(vae, self._latents_of(of, step))

    def _latents_of(self, of: str, step: int) -> torch.Tensor:
        """[C, h, w]: x0 at a step, or latents at a step boundary (0..num_steps)."""
        if of == "x0":
            return self.x0[self.step_indices(step)[0]]
        if of == "latents":
            n = len(self.latents)
            if not -n <= step < n:
                raise IndexError(f"latents index {step} is out of range: this trace has {n} (0..{n - 1}; "
                                 f"latents[i] enters step i, latents[{n - 1}] is the final one).")
            return self.latents[step]
        raise ValueError(f"of must be 'x0' or 'latents', not {of!r}.")

    # ---- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the trace to ``path`` (safetensors with JSON metadata); returns the path."""
        from .io import save_trace

        return save_trace(self, path)
