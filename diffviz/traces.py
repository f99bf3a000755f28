"""The Trace: everything one traced generation captured, indexed by step, layer and token.

Capture writes it, everything else reads it. It holds only CPU tensors and plain metadata (never
the model), so a trace made on a GPU opens on a laptop.

The axes, for images and videos alike: a video adds one axis, ``frame``, right before the spatial ones,
and nothing else moves. Latents and x0 are ``[.., C, h, w]`` for an image and ``[.., C, frame, h, w]``
for a video, whose frames are *latent frames* (the VAE folds ``temporal_compression`` output frames into
one, the first alone: latent frame 0 is output frame 0, latent frame k >= 1 covers output frames
``(k - 1) * tc + 1 .. k * tc``; ``latent_frame_of`` and ``output_frames_of`` map between them). Attention
maps are ``[step, head, token, h, w]`` or ``[step, head, token, frame, h, w]`` (a layer's ``size`` is
``(h, w)`` or ``(frame, h, w)``, its query grid); ``image`` is ``[H, W, 3]`` or the whole video
``[output frame, H, W, 3]``; a word's heat map is ``[H, W]`` or ``[frame, H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import heatmap
from .decode import decode, preview
from .select import Layers, Steps, find_word, select_layers, select_steps


@dataclass(frozen=True)
class Token:
    """One tokenizer unit. ``position`` indexes the text encoder's context (0 is the start token)."""

    position: int  # index into the text keys the attention reads (SD: the 77 CLIP positions)
    text: str  # as the tokenizer spells it, e.g. "circle</w>"
    word: int | None  # index into Trace.words; None for start, end and padding tokens
    encoder: str | None = None  # which text encoder made it ("clip", "t5"), when a model has several


@dataclass(frozen=True)
class Layer:
    """One attention module of the denoiser that reads the prompt, described for selection and display
    (the model family's adapter makes these; nothing else parses module paths)."""

    name: str  # module path, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    size: tuple[int, ...]  # (h, w) of its attention maps (its query grid), latent cells; video: (frame, h, w)
    heads: int  # attention heads of the module (the stored head axis may be 1: the mean)
    label: str = ""  # short display name, e.g. "up 1.0.0"; the name when empty
    block: str = ""  # the group it belongs to, e.g. "down", "mid", "up" (U-Net), "joint", "single" (Flux)

    @property
    def resolution(self) -> str:
        """The spatial grid, "hxw" (a video layer's frames are not part of it)."""
        return f"{self.size[-2]}x{self.size[-1]}"

    @property
    def frames(self) -> int:
        """Frames of its query grid: 1 for an image."""
        return self.size[0] if len(self.size) == 3 else 1

    @property
    def title(self) -> str:
        """What views call the layer: its label, or its name."""
        return self.label or self.name


def output_frames(frame: int, temporal_compression: int) -> range:
    """The output frames latent frame ``frame`` (0 or more) decodes to: the first alone, then
    ``temporal_compression`` a latent frame."""
    tc = temporal_compression
    return range(1) if frame == 0 else range((frame - 1) * tc + 1, frame * tc + 1)


def guide(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance, the prediction the sampler uses: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


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
    # a video has a frame axis before (h, w) in each of these (see the module docstring)
    latents: torch.Tensor  # [step + 1, C, h, w] latents[i] before step i, latents[i + 1] after it
    x0: torch.Tensor  # [step, C, h, w] predicted clean latents at each step
    noise_cond: torch.Tensor  # [step, C, h, w] conditional noise prediction, before guidance
    noise_uncond: torch.Tensor | None  # [step, C, h, w] unconditional one; None without guidance
    attn: dict[str, torch.Tensor]  # layer name -> [step, head, token, h, w] probabilities
    attn_uncond: dict[str, torch.Tensor] = field(default_factory=dict)  # same, unconditional half
    image: torch.Tensor | None = None  # [H, W, 3] uint8, the pipeline's output image ([frame, H, W, 3] video)
    preview_weight: torch.Tensor | None = None  # [3, C + 1] latent (and bias) -> RGB in [0, 1]
    model: dict = field(default_factory=dict)  # name, pipeline class, config hash
    scheduler: dict = field(default_factory=dict)  # class name and config
    options: dict = field(default_factory=dict)  # how it was captured
    # self-attention on request (trace(pipe, queries=...)): where chosen pixels or boxes look, image to image
    queries: list[list[float]] = field(default_factory=list)  # [x, y] pixel or [x0, y0, x1, y1] box, image px
    self_layers: list[Layer] = field(default_factory=list)  # the self-attention modules, in run order
    self_attn: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> [step, head, query, h, w]

    # ---- shape of the trace -------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def is_video(self) -> bool:
        """Whether the trace is of a video (latents with a frame axis)."""
        return self.latents.ndim == 5

    @property
    def num_frames(self) -> int:
        """Latent frames: 1 for an image."""
        return int(self.latents.shape[2]) if self.is_video else 1

    @property
    def temporal_compression(self) -> int:
        """Output frames per latent frame (after the first, which is alone): 1 for an image."""
        return int(self.model.get("temporal_compression", 1))

    def output_frames_of(self, frame: int) -> range:
        """The output frames (indices into a video ``image``) that latent frame ``frame`` decodes to."""
        n, tc = self.num_frames, self.temporal_compression
        if not -n <= frame < n:
            raise IndexError(f"latent frame {frame} is out of range: this trace has {n} (0..{n - 1}).")
        return output_frames(frame % n, tc)

    def latent_frame_of(self, output_frame: int) -> int:
        """The latent frame that output frame ``output_frame`` (index into a video ``image``) comes from."""
        last = (self.num_frames - 1) * self.temporal_compression
        if not 0 <= output_frame <= last:
            raise IndexError(f"output frame {output_frame} is out of range: this video has {last + 1} "
                             f"(0..{last}).")
        return 0 if output_frame == 0 else (output_frame - 1) // self.temporal_compression + 1

    def frame(self, frame: int) -> Trace:
        """Latent frame ``frame`` of a video as an image trace (views of this one's tensors, no copies): its
        latents, x0, noise predictions and attention maps, and as its image the last output frame the latent
        frame decodes to. Every image view (figures, explorer, heat maps) then works on one frame."""
        if not self.is_video:
            raise ValueError("this trace is of an image; frame() picks a frame of a video.")
        self.output_frames_of(frame)  # range check
        k = frame % self.num_frames

        def at(maps: torch.Tensor) -> torch.Tensor:  # [..., frame, h, w]: a grid frame may span latent frames
            return maps[..., k * maps.shape[-3] // self.num_frames, :, :]

        pick = lambda x: None if x is None else x[:, :, k]  # [step, C, frame, h, w] -> [step, C, h, w]
        layers = [Layer(l.name, tuple(l.size[-2:]), l.heads, l.label, l.block) for l in self.layers]
        return replace(
            self, layers=layers, latents=pick(self.latents), x0=pick(self.x0),
            noise_cond=pick(self.noise_cond), noise_uncond=pick(self.noise_uncond),
            attn={n: at(m) for n, m in self.attn.items()},
            attn_uncond={n: at(m) for n, m in self.attn_uncond.items()},
            image=None if self.image is None else self.image[self.output_frames_of(k)[-1]],
            options=self.options | {"frame": k},
        )

    @property
    def noise_guided(self) -> torch.Tensor:
        """[step, C, h, w] uncond + guidance_scale * (cond - uncond), the prediction the sampler used."""
        if self.noise_uncond is None:
            return self.noise_cond
        return guide(self.noise_uncond, self.noise_cond, self.guidance_scale)

    @property
    def nbytes(self) -> int:
        """Bytes held by the trace's tensors (what a saved file costs, to a few kB of metadata)."""
        tensors = [self.timesteps, self.alpha_bar, self.sigma, self.latents, self.x0, self.noise_cond,
                   self.noise_uncond, self.image, self.preview_weight, *self.attn.values(),
                   *self.attn_uncond.values(), *self.self_attn.values()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def __repr__(self) -> str:
        kept = "all heads" if self.options.get("heads") else "head mean"
        frames = f"{self.num_frames} latent frames of " if self.is_video else ""
        return (
            f"Trace({self.prompt!r}, {self.num_steps} steps, {frames}{self.height}x{self.width} px, "
            f"{len(self.layers)} layers ({', '.join(sorted({l.resolution for l in self.layers}))}), "
            f"{len(self.tokens)} tokens, {kept}, guidance {self.guidance_scale:g})"
        )

    # ---- selections ---------------------------------------------------------------------------
    def step_indices(self, steps: Steps = None) -> list[int]:
        """Validate ``steps`` (int, slice, list, None = all; negative counts from the end)."""
        return select_steps(self.num_steps, steps, what="this trace")

    def layer_names(self, layers: Layers = None) -> list[str]:
        """Captured layers picked by ``layers`` (see ``select_layers``), in run order; None: all."""
        return select_layers(self.layers, layers)

    def word_indices(self, word: str | int) -> list[int]:
        """Indices into ``words`` for a word (every occurrence, case-insensitive) or a word index."""
        return find_word(self.words, self.prompt, word)

    def token_indices(self, words: str | int | Sequence[str | int] | None = None,
                      tokens: int | Sequence[int] | None = None, encoder: str | None = None) -> list[int]:
        """Indices into the stored token axis for ``words`` (all their subword tokens) and/or
        ``tokens`` (context positions, e.g. 0 for the start token). None for both: every word token.
        ``encoder`` ("clip", "t5"): only the tokens of that text encoder (SD3 reads a word through both)."""
        if encoder is not None:
            have = sorted({t.encoder for t in self.tokens if t.encoder})
            if encoder not in have:
                raise ValueError(f"encoder={encoder!r} made none of this trace's tokens; its encoders are "
                                 f"{have or 'not named (one text encoder)'}.")
            return [i for i in self.token_indices(words, tokens) if self.tokens[i].encoder == encoder]
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
                size: tuple[int, int] | None = None, normalize: bool = True,
                recipe: str = "diffviz", encoder: str | None = None) -> torch.Tensor:
        """[H, W] float32 attention heat map at image pixel size (or ``size``); in [0, 1] when normalised.
        A video's is [frame, H, W] over its latent frames, normalised over the whole video (frames compare).

        ``recipe="diffviz"``: each layer's head mean, summed over the selected tokens, bilinearly on the
        largest map's grid, averaged over the selected layers (each layer equal) and steps, bilinearly
        to the image. ``recipe="daam"``: DAAM 0.2's weighting exactly (``heatmap.daam``), bicubically
        to the image. ``encoder`` ("clip", "t5"): only that text encoder's tokens (SD3 has both)."""
        idx = self.token_indices(words, tokens, encoder)
        picked, names = self.step_indices(steps), self.layer_names(layers)
        if recipe == "daam":
            if self.is_video:
                raise ValueError("recipe='daam' is DAAM's image recipe; a video's maps use recipe='diffviz'.")
            out = heatmap.upsample(heatmap.daam(self, idx, picked, names, heads, uncond),
                                   size or (self.height, self.width), mode="bicubic")
        elif recipe == "diffviz":
            maps = heatmap.per_step(self, idx, picked, names, heads, uncond)
            out = heatmap.upsample(maps.mean(0), size or (self.height, self.width))
        else:
            raise ValueError(f"recipe must be 'diffviz' or 'daam', not {recipe!r}.")
        if not normalize:
            return out
        if self.is_video:  # over the whole video, so frames compare
            return heatmap.normalize(out.flatten(-3, -2)).view_as(out)
        return heatmap.normalize(out)

    def self_heatmap(self, query: int = 0, *, steps: Steps = None, layers: Layers = None,
                     heads: int | Sequence[int] | None = None, size: tuple[int, int] | None = None,
                     normalize: bool = True) -> torch.Tensor:
        """[H, W] float32: where query ``query`` (index into ``queries``: a pixel, or a box whose pixels'
        attention is averaged) looks in the image through self-attention, averaged over the selected
        steps, self-attention layers and heads (each map sums to 1 over its grid before upsampling)."""
        if not self.self_attn:
            raise ValueError("this trace holds no self-attention maps; capture with "
                             "diffviz.trace(pipe, queries=[(x, y), (x0, y0, x1, y1), ...]).")
        if not 0 <= query < len(self.queries):
            raise IndexError(f"query {query} is out of range: this trace has {len(self.queries)} queries "
                             f"{self.queries}.")
        steps = self.step_indices(steps)
        names = select_layers(self.self_layers, layers, what="self-attention layer")
        grid = max((l.size for l in self.self_layers if l.name in names), key=lambda s: s[0] * s[1])
        total = torch.zeros(grid)
        for name in names:
            maps = self.self_attn[name][steps][:, :, query]  # [step, head, h, w]
            if heads is not None:
                maps = maps[:, heatmap.head_indices(self, maps.shape[1], heads)]
            total += heatmap.upsample(maps.float().mean((0, 1)), grid)
        out = heatmap.upsample(total / len(names), size or (self.height, self.width))
        return heatmap.normalize(out) if normalize else out

    def word_heatmap(self, word: str | int, **kwargs) -> torch.Tensor:
        """[H, W] float32 in [0, 1]: where ``word`` (every occurrence) sent its information; [frame, H, W]
        over a video's latent frames (``output_frames_of`` maps them to the video's frames)."""
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
