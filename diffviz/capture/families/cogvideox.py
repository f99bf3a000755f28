"""CogVideoX (``CogVideoXPipeline``): a video DiT (``CogVideoXTransformer3DModel``) whose joint attention
reads T5 tokens.

Each ``transformer_blocks.i.attn1`` runs one softmax over the prompt's T5 tokens (``max_sequence_length``,
226, padding included: no mask) followed by the video tokens, a (frame, h, w) grid of 2x2 latent patches
(CogVideoX 1.5 also pairs latent frames, ``patch_size_t``). The word maps are the video-query rows and
text-key columns, renormalised over the text keys (``diffviz.capture.joint``). The latents are stepped as
``[B, frame, C, h, w]`` and unpacked to ``[B, C, frame, h, w]``; guidance is batched ([uncond, cond]); the
schedulers (CogVideoX's DDIM and DPM) are DDPM-style with v-prediction. With ``use_dynamic_cfg=True`` the
guidance scale changes every step: ``trace.guidance_scale`` is the last step's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...traces import Layer
from .. import joint
from . import t5
from .base import CaptureError, register, require_processor, running_guidance
from .ddpm import DDPMSchedule
from .video import VideoFamily


@register
class CogVideoXFamily(t5.OneT5, VideoFamily, DDPMSchedule):
    name = "cogvideox"
    pipelines = "CogVideoXPipeline (CogVideoX 1.0 / 1.5 text-to-video: joint attention over T5)"
    transformer_class = "CogVideoXTransformer3DModel"
    joint = True
    _guided = False  # whether the running call uses classifier-free guidance (a local of its __call__)

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(pipe).__name__ == "CogVideoXPipeline" and super().matches(pipe)

    def patch(self) -> tuple[int, int]:
        config = self.denoiser.config
        return config.patch_size, config.patch_size_t or 1

    def default_size(self) -> tuple[int, int]:
        config = self.denoiser.config
        return config.sample_height * self.vae_scale, config.sample_width * self.vae_scale

    def default_frames(self) -> int:
        return int(self.denoiser.config.sample_frames)

    def self_layers(self, latent: tuple[int, ...]) -> list[Layer]:
        return []  # video-to-video queries are not traced yet

    def layers(self, latent: tuple[int, ...]) -> list[Layer]:
        size = self.token_grid(latent)
        return [Layer(f"transformer_blocks.{i}.attn1", size, b.attn1.heads, f"joint {i}", "joint")
                for i, b in enumerate(self.denoiser.transformer_blocks)]

    def processor(self, name: str, original, sink, edit):
        from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

        if edit is not None:
            raise CaptureError("attention edits are not available for CogVideoX yet; trace it without edit=.")
        require_processor(name, original, CogVideoXAttnProcessor2_0, "CogVideoX", "fused processors are")
        return CogVideoXProcessor(name, sink)

    def denoiser_io(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, object]:
        self._guided = running_guidance(self.pipe) is not None
        return super().denoiser_io(args, kwargs)

    def guided(self) -> bool:
        return self._guided

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, frame, C, h, w] (how CogVideoX steps) -> [B, C, frame, h, w]."""
        return latents.transpose(1, 2)


class CogVideoXProcessor:
    """diffusers' ``CogVideoXAttnProcessor2_0`` op for op (so the video is bitwise unchanged), which hands
    the sink the video queries [b, head, video, d] and text keys [b, head, text, d] it made anyway."""

    def __init__(self, layer: str, sink):
        self.layer, self.sink = layer, sink

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: torch.Tensor | None = None) -> torch.Tensor:
        n_text = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
                             for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query[:, :, n_text:] = apply_rotary_emb(query[:, :, n_text:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, n_text:] = apply_rotary_emb(key[:, :, n_text:], image_rotary_emb)
        if self.sink is not None and self.sink.wants(self.layer):
            video_q, video_k, text_k = query[:, :, n_text:], key[:, :, n_text:], key[:, :, :n_text]
            joint.keep(self.sink, self.layer, attn, video_q, video_k, text_k, None)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                       dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [n_text, hidden_states.size(1) - n_text], dim=1)
        return hidden_states, encoder_hidden_states
