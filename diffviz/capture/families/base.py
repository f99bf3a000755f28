"""The Family protocol every model family implements, its shared pieces, and the registry.

A family module defines a ``Family`` subclass and decorates it with ``@register``; ``family_of(pipe)``
asks the registered families in registration order (the order ``families/__init__`` imports them).
See ``diffviz.capture.families`` for what an adapter provides.
"""


from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...traces import Layer, Token

__all__ = ["CaptureError", "Family", "PromptTokens", "TransformerDenoiser", "family_of", "register",
           "supported"]


class CaptureError(RuntimeError):
    """A generation that diffviz cannot trace (or edit) as asked; the message says what to change."""


def require_processor(name: str, original, expected: type, family: str, untraced: str) -> None:
    """Refuse (CaptureError) a layer whose processor is not ``expected``: diffviz's replacement would drop
    its effect. ``untraced`` names the processors not traced on ``family`` yet, for the message."""
    if type(original) is not expected:
        raise CaptureError(
            f"layer {name!r} runs a {type(original).__name__}, not diffusers' {expected.__name__}: diffviz "
            f"would replace it and drop its effect on the image ({untraced} not traced on {family} yet). "
            "Trace without it (e.g. pipe.unload_ip_adapter()), or pick other layers with layers=..."
        )


def running_guidance(pipe) -> float | None:
    """The guidance scale of the ``pipe.__call__`` running the denoiser now, None without guidance. For the
    pipelines that keep guidance_scale and do_classifier_free_guidance as locals of ``__call__`` (PixArt,
    CogVideoX; SD has attributes): read from that call's frame."""
    frame = inspect.currentframe()
    while frame is not None:
        local = frame.f_locals
        if frame.f_code.co_name == "__call__" and local.get("self") is pipe and "guidance_scale" in local:
            return float(local["guidance_scale"]) if local.get("do_classifier_free_guidance") else None
        frame = frame.f_back
    return None


def padded_ids(trace, ids: torch.Tensor, pad_id: int, positions: Sequence[int] | None = None) -> torch.Tensor:
    """A copy of ``ids`` [batch, token] with the trace's word tokens (or ``positions``) set to ``pad_id``:
    attribution's baseline, the prompt with its words made padding."""
    if positions is None:
        positions = [t.position for t in trace.tokens if t.word is not None]
    ids = ids.clone()
    ids[:, list(positions)] = pad_id
    return ids


@dataclass
class PromptTokens:
    """What one prompt's text keys are: its words and one Token per key position."""

    prompt: str
    negative_prompt: str | None
    words: list[str]
    tokens: list[Token]  # every text key position, in order
    special: list[int] = field(default_factory=list)  # positions tokens="special" keeps besides the words

    def positions(self, mode: str) -> list[int]:
        """Key positions stored for ``tokens=mode`` ("prompt", "special" or "all")."""
        words = [t.position for t in self.tokens if t.word is not None]
        if mode == "prompt":
            return words
        if mode == "special":
            return sorted(set(words) | set(self.special))
        return [t.position for t in self.tokens]


class Family:
    """The protocol an adapter implements (see the module docstring); defaults where families agree."""

    name = ""
    pipelines = ""  # what it handles, for error messages
    classifier_free = True  # whether the pipeline can run classifier-free guidance (batch [uncond, cond])
    joint = False  # one softmax over image and text keys (SD3, Flux), not cross-attention
    # turn each layer's q/k into maps as soon as the layer ran, not batched at the end of the step: for
    # transformers at 1024 px, holding every layer's queries (and their scores) until then costs gigabytes
    maps_per_layer = False
    video = False  # latents and query grids with a frame axis (families/video.py)
    # how a guided step calls the denoiser: "batched" (once, batch [uncond, cond]) or "separate" (twice,
    # the conditional branch first: Wan)
    guidance_calls = "batched"

    def __init__(self, pipe):
        self.pipe = pipe

    @classmethod
    def matches(cls, pipe) -> bool:
        raise NotImplementedError

    @property
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    def layers(self, latent: tuple[int, int]) -> list[Layer]:
        raise NotImplementedError

    def processor(self, name: str, original, sink, edit):
        raise NotImplementedError

    def self_layers(self, latent: tuple[int, int]) -> list[Layer]:
        """Image self-attention modules for ``trace(pipe, queries=...)``: in joint attention the prompt
        layers themselves (their image rows over the image keys), else none unless a family lists them."""
        return self.layers(latent) if self.joint else []

    def text_encoders(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    def read_prompt(self, ids: list[list[torch.Tensor]], prompt: int) -> PromptTokens:
        raise NotImplementedError

    def x0(self, model_output: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def schedule(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # ---- defaults ------------------------------------------------------------------------------
    def denoiser_io(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, object]:
        """(sample, timestep) of a denoiser call."""
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        return sample, t

    def prediction(self, output) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output.sample

    def guided(self) -> bool:
        """Whether the denoiser's batch is [unconditional, conditional] (classifier-free guidance)."""
        return bool(getattr(self.pipe, "do_classifier_free_guidance", False))

    def guidance_scale(self) -> float:
        return float(getattr(self.pipe, "guidance_scale", 1.0))

    @property
    def vae_scale(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    def output_bytes(self, latent: tuple[int, ...]) -> int:
        """Bytes of the decoded picture ([H, W, 3] uint8) of a latent grid (h, w)."""
        return latent[-2] * latent[-1] * self.vae_scale**2 * 3

    def latent_size(self, sample: torch.Tensor) -> tuple[int, int]:
        return int(sample.shape[-2]), int(sample.shape[-1])

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] latents from what the scheduler steps on (identity unless a family packs them)."""
        return latents

    def default_size(self) -> tuple[int, int]:
        """(H, W) pixels the pipeline makes when no height/width is given."""
        size = self.denoiser.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return h * self.vae_scale, w * self.vae_scale

    def image_size(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(H, W) pixels of a call given ``height`` / ``width`` (None: the pipeline's default)."""
        h, w = self.default_size()
        return height or h, width or w

    def latent_grid(self, height: int | None = None, width: int | None = None,
                    frames: int | None = None) -> tuple[int, ...]:
        """(h, w) latent cells of an image of ``height`` x ``width`` pixels (None: the default size);
        ``frames`` is for video families, which add the latent frames in front."""
        h, w = self.image_size(height, width)
        return h // self.vae_scale, w // self.vae_scale

    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    def stored_dtypes(self) -> tuple[torch.dtype, torch.dtype]:
        """(dtype of the latents and x0 the scheduler steps on, dtype of the denoiser's predictions)."""
        return self.denoiser.dtype, self.denoiser.dtype

    def model_info(self) -> dict:
        config = json.dumps(dict(self.denoiser.config), sort_keys=True, default=str)
        pipe = self.pipe
        return {
            "name": str(getattr(pipe, "name_or_path", "") or pipe.config.get("_name_or_path", "")),
            "pipeline": type(pipe).__name__,
            "family": self.name,
            "config_sha256": hashlib.sha256(config.encode()).hexdigest()[:16],
            "dtype": str(self.denoiser.dtype).removeprefix("torch."),
        }

    def step_model(self, trace, step: int, target: str):
        raise NotImplementedError(f"attribution is not available for {self.name} pipelines yet.")


class TransformerDenoiser:
    """Mixin for families whose denoiser is ``pipe.transformer``, a DiT of the class ``transformer_class``."""

    transformer_class = ""
    maps_per_layer = True

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(getattr(pipe, "transformer", None)).__name__ == cls.transformer_class

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.transformer

    def denoiser_io(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, object]:
        """(sample, timestep): diffusers' transformers take ``hidden_states`` and a batch of timesteps."""
        sample = args[0] if args else kwargs["hidden_states"]
        return sample, torch.as_tensor(kwargs["timestep"]).reshape(-1)[0]

    def token_grid(self, latent: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image tokens for a latent of ``latent``: one token per ``patch_size`` patch."""
        p = self.denoiser.config.patch_size
        return latent[0] // p, latent[1] // p


FAMILIES: list[type[Family]] = []  # registered, in the order family_of tries them


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make ``cls`` one of the families ``family_of`` tries (after those registered
    before it)."""
    FAMILIES.append(cls)
    return cls


def supported() -> str:
    """The pipelines diffviz can trace, for messages."""
    return "; ".join(f.pipelines for f in FAMILIES)


def family_of(pipe) -> Family:
    """The adapter for ``pipe``, made once per run (it holds the run's facts: layers, how guidance splits
    the batch, text lengths); TypeError naming the supported pipelines when no family handles it."""
    for family in FAMILIES:
        if family.matches(pipe):
            return family(pipe)
    raise TypeError(f"diffviz cannot trace a {type(pipe).__name__}: it has no denoiser with a prompt-reading "
                    f"attention that diffviz knows. Supported: {supported()}.")
