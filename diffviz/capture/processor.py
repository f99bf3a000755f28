"""The attention processor diffviz installs on ``attn2`` (cross-attention) layers.

It computes exactly what diffusers' ``AttnProcessor2_0`` computes (same ops, same order, so the
image is bitwise unchanged) and hands the query and key it already made to a recorder, which turns
them into attention probabilities once per step. With an ``edit`` it computes the probabilities
itself, lets the edit change them, and uses them for the output (prompt-to-prompt style).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

# probs: [batch, head, query, token] -> edited probs of the same shape
Edit = Callable[[str, torch.Tensor], torch.Tensor]


class Sink(Protocol):
    def keep(self, layer: str, attn: Attention, query: torch.Tensor, key: torch.Tensor,
             probs: torch.Tensor | None) -> None: ...


class Attn2Processor:
    """Cross-attention for one named layer; ``sink`` receives q [batch, head, query, dim],
    k [batch, head, token, dim] and, when ``edit`` is set, the edited probs [batch, head, query, token]."""

    def __init__(self, layer: str, sink: Sink | None = None, edit: Edit | None = None):
        self.layer, self.sink, self.edit = layer, sink, edit

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.edit is None:
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
            probs = None
        else:
            scores = (query.float() @ key.float().transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask.float()
            probs = self.edit(self.layer, scores.softmax(-1))
            hidden_states = (probs.to(value.dtype) @ value)
        if self.sink is not None:
            self.sink.keep(self.layer, attn, query, key, probs)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
