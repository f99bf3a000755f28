"""Model families: the only code that knows a U-Net from a transformer.

The capture, the edits, attribution, ``estimate_bytes``, the ``Trace`` and its views learn about a
pipeline from one adapter, a ``Family`` subclass chosen by ``family_of(pipe)``. Adding a family is one
new module here (and its class in ``FAMILIES``). No module may import diffusers at its top level (a
trace must open without it). An adapter provides:

* ``name`` and ``matches(pipe)`` (classmethod): which pipelines it handles.
* ``denoiser``: the module called once per step; its ``attn_processors`` / ``set_attn_processor`` are
  where processors go. ``denoiser_io(args, kwargs) -> (sample, timestep)`` reads its input,
  ``prediction(output)`` its output (what ``scheduler.step`` receives).
* ``layers(latent) -> list[Layer]``: every attention module that reads the prompt, in the order the
  denoiser runs them, each with its query grid for a latent of (h, w) cells, its heads, a display
  ``label`` and a ``block`` (the group names the layer selector and the views use).
* ``self_layers(latent) -> list[Layer]`` (optional, default none): the image-to-image self-attention
  modules, for self-attention maps of chosen query pixels (``trace(pipe, queries=...)``); their
  processor gets the image keys.
* ``processor(name, original, sink, edit)``: the processor to install on module ``name`` in place of
  ``original``. Keep the original's effect (wrap it) or raise ``CaptureError`` saying why it cannot.
  The sink receives the query and the *text* keys (``sink.keep``), or normalised probabilities over the
  text keys; ``edit(layer, probs)`` changes probabilities over the text keys.
* ``text_encoders()``: modules whose input ids are recorded; ``read_prompt(ids, prompt)`` turns them
  into a ``PromptTokens`` (words, and one ``Token`` per text key position with its word and encoder).
* the schedule: ``x0(model_output, t, sample)`` when the scheduler does not return it, and
  ``schedule(t) -> (alpha_bar, sigma)`` per step (alphas for DDPM-style schedulers, sigmas for flow
  matching), stored in the Trace.
* the rest has defaults here: ``guided()``, ``latent_size(sample)``, ``unpack(latents)``,
  ``default_size()``, ``latent_channels()``, ``model_info()``; ``step_model(trace, step, target)``
  rebuilds one denoiser call for attribution (families without it raise NotImplementedError).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ...trace import Layer, Token

__all__ = ["FAMILIES", "CaptureError", "Family", "PromptTokens", "family_of", "supported"]


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
    # turn each layer's q/k into maps as soon as the layer ran, not batched at the end of the step: for
    # transformers at 1024 px, holding every layer's queries (and their scores) until then costs gigabytes
    maps_per_layer = False

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
        return []

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

    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

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

    def token_grid(self, latent: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image tokens for a latent of ``latent``: one token per ``patch_size`` patch."""
        p = self.denoiser.config.patch_size
        return latent[0] // p, latent[1] // p


from .sd import SDFamily  # noqa: E402, I001  (after Family: it subclasses it)
from .sd3 import SD3Family  # noqa: E402, I001
from .flux import FluxFamily  # noqa: E402, I001
from .pixart import PixArtFamily  # noqa: E402, I001

# tried in order by family_of
FAMILIES: tuple[type[Family], ...] = (SDFamily, SD3Family, FluxFamily, PixArtFamily)


def supported() -> str:
    """The pipelines diffviz can trace, for messages."""
    return "; ".join(f.pipelines for f in FAMILIES)


def family_of(pipe) -> Family:
    """The adapter for ``pipe``; TypeError naming the supported pipelines when none handles it."""
    for family in FAMILIES:
        if family.matches(pipe):
            return family(pipe)
    raise TypeError(f"diffviz cannot trace a {type(pipe).__name__}: it has no denoiser with a prompt-reading "
                    f"attention that diffviz knows. Supported: {supported()}.")
