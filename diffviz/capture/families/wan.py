"""Wan 2.1 (``WanPipeline``): a video DiT (``WanTransformer3DModel``) with cross-attention over UMT5 tokens.

Each ``blocks.i.attn2`` is cross-attention: video queries on a grid of (frame, h, w) patches (1x2x2
latent cells each), keys from the prompt's T5 states, zero-padded to ``max_sequence_length`` (512) with no
mask, so the padding keys take a share of the softmax as they do in the model. The pipeline runs the
conditional and the unconditional branch as two denoiser calls per step (conditional first):
``guidance_calls = "separate"``. The scheduler is flow matching (UniPC or Euler with flow sigmas): the
transformer predicts the velocity. Wan 2.2's two experts (``transformer_2``) are not traced yet.
"""

from __future__ import annotations

import inspect

import torch

from ...traces import Layer
from . import t5
from .base import CaptureError, register
from .flow import FlowMatching
from .video import ScaledAttention, VideoFamily


@register
class WanFamily(t5.OneT5, VideoFamily, FlowMatching):
    name = "wan"
    pipelines = "WanPipeline (Wan 2.1 text-to-video: DiT with cross-attention over UMT5)"
    transformer_class = "WanTransformer3DModel"
    guidance_calls = "separate"

    def __init__(self, pipe):
        super().__init__(pipe)
        if getattr(pipe, "transformer_2", None) is not None:
            raise CaptureError("this Wan pipeline has two experts (transformer_2, Wan 2.2); diffviz traces "
                               "one denoiser per run: trace a Wan 2.1 pipeline, or set pipe.transformer_2 "
                               "aside.")

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(pipe).__name__ == "WanPipeline" and super().matches(pipe)

    def patch(self) -> tuple[int, int]:
        pt, p, _ = self.denoiser.config.patch_size
        return p, pt

    def default_size(self) -> tuple[int, int]:
        params = inspect.signature(type(self.pipe).__call__).parameters
        return int(params["height"].default), int(params["width"].default)

    def stored_dtypes(self) -> tuple[torch.dtype, torch.dtype]:
        """Wan's pipeline keeps its latents in float32 whatever the transformer's dtype."""
        return torch.float32, self.denoiser.dtype

    def layers(self, latent: tuple[int, ...]) -> list[Layer]:
        size = self.token_grid(latent)
        return [Layer(f"blocks.{i}.attn2", size, b.attn2.heads, f"cross {i}", "cross")
                for i, b in enumerate(self.denoiser.blocks)]

    def processor(self, name: str, original, sink, edit):
        if edit is not None:
            raise CaptureError("attention edits are not available for Wan yet; trace it without edit=.")
        return WanProcessor(name, original, sink)


class WanProcessor:
    """Wan's own processor, kept for the output (so the video is unchanged), which also hands the sink the
    module's video queries [b, head, query, d] and text keys [b, head, token, d], recomputed from its weights
    and normalised as ``WanAttnProcessor`` normalises them (RMS norm over all heads, then split)."""

    def __init__(self, layer: str, original, sink):
        self.layer, self.original, self.sink = layer, original, sink

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None, **kwargs) -> torch.Tensor:
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        if self.sink is not None and self.sink.wants(self.layer):
            text = encoder_hidden_states
            if attn.add_k_proj is not None:  # image-to-video: CLIP image tokens first, then 512 text tokens
                text = text[:, text.shape[1] - 512:]
            split = lambda x: x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
            query = split(attn.norm_q(attn.to_q(hidden_states)))
            key = split(attn.norm_k(attn.to_k(text)))
            self.sink.keep(self.layer, ScaledAttention(query.shape[-1] ** -0.5), query, key, None)
        return out
