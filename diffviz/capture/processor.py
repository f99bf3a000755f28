"""The attention processors diffviz installs on diffusers ``Attention`` modules that read the prompt
(cross-attention: SD's ``attn2``, the classroom model's ``attn1``, PixArt's ``attn2``).

``CrossAttnProcessor`` computes exactly what diffusers' ``AttnProcessor2_0`` computes (same ops, same
order, so the image is bitwise unchanged) and hands the query and key it already made to a sink,
which turns them into attention probabilities once per step. With an ``edit`` it computes the
probabilities itself, lets the edit change them, and uses them for the output (prompt-to-prompt style).

``wrap`` keeps a processor diffviz did not write (IP-Adapter, sliced, xformers, a custom one): it runs
that processor unchanged for the output and recomputes the module's own query and text keys for the
sink, so the processor's effect on the image stays and the maps show the module's text attention.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

# (layer, probs [batch, head, query, token]) -> edited probs of the same shape
Edit = Callable[[str, torch.Tensor], torch.Tensor]


class Sink(Protocol):
    softmax_over: str  # "text" or "all": see diffviz.trace; joint processors then hand ``text_mass`` too

    def wants(self, layer: str) -> bool: ...

    def keep(self, layer: str, attn: Attention, query: torch.Tensor, key: torch.Tensor,
             probs: torch.Tensor | None, text_mass: torch.Tensor | None = None) -> None: ...

    def wants_self(self, layer: str) -> bool: ...

    def keep_self(self, layer: str, attn: Attention, query: torch.Tensor, key: torch.Tensor) -> None: ...


def qk_norm(attn, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's query and key norms (RMS / layer norm per head, in SD3, Flux and some U-Nets), where it
    has them, applied to ``[..., d]`` head-split projections as diffusers' processors apply them."""
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key


def split_heads(attn, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[b, seq, heads * d]`` projections -> ``[b, heads, seq, d]``, with the module's q/k norms applied
    (as diffusers' SDPA processors do, op for op)."""
    b, head_dim = query.shape[0], key.shape[-1] // attn.heads
    query, key, value = (x.view(b, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    return *qk_norm(attn, query, key), value


class CrossAttnProcessor:
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

        query, key, value = split_heads(attn, query, key, value)

        if self.edit is None:
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
            probs = None
            if attention_mask is not None and self.sink is not None and self.sink.wants(self.layer):
                # masked keys (PixArt's T5 padding): the sink could not tell them from q and k alone
                scores = (query.float() @ key.float().transpose(-1, -2)) * attn.scale
                probs = (scores + attention_mask.float()).softmax(-1)
        else:
            scores = (query.float() @ key.float().transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask.float()
            probs = self.edit(self.layer, scores.softmax(-1))
            hidden_states = (probs.to(value.dtype) @ value)
        if self.sink is not None:
            self.sink.keep(self.layer, attn, query, key, probs)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * query.shape[-1])
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class Wrapped:
    """A foreign processor kept in place: ``original`` computes the output; the sink gets the module's
    query [batch, head, query, dim] and text keys [batch, head, token, dim], recomputed from its weights."""

    def __init__(self, layer: str, original, sink: Sink | None):
        self.layer, self.original, self.sink = layer, original, sink
        self._signature = inspect.signature(original.__call__)

    def run(self, *args, **kwargs) -> torch.Tensor:
        out = self.original(*args, **kwargs)
        if self.sink is not None and self.sink.wants(self.layer):
            bound = self._signature.bind(*args, **kwargs).arguments
            query, key = self._query_key(bound)
            self.sink.keep(self.layer, bound["attn"], query, key, None)
        return out

    def _query_key(self, bound: dict) -> tuple[torch.Tensor, torch.Tensor]:
        attn, hidden = bound["attn"], bound["hidden_states"]
        text = bound.get("encoder_hidden_states")
        if attn.spatial_norm is not None:
            hidden = attn.spatial_norm(hidden, bound.get("temb"))
        if hidden.ndim == 4:
            hidden = hidden.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
        if isinstance(text, tuple):  # IP-Adapter: (text, image embeddings)
            text = text[0]
        elif text is not None and hasattr(self.original, "num_tokens"):  # IP-Adapter: image tokens appended
            text = text[:, : text.shape[1] - sum(self.original.num_tokens)]
        if text is None:
            text = hidden
        elif attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        query = attn.to_q(hidden).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        key = attn.to_k(text).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        return qk_norm(attn, query, key)


def wrap(layer: str, original, sink: Sink | None) -> Wrapped:
    """A ``Wrapped`` whose call signature is ``original``'s: diffusers' ``Attention`` passes a processor only
    the keyword arguments its signature names (e.g. IP-Adapter masks), so the wrapper must name the same."""
    signature = inspect.signature(original.__call__)

    def __call__(self, *args, **kwargs):
        return self.run(*args, **kwargs)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    __call__.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])
    cls = type(f"Wrapped{type(original).__name__}", (Wrapped,), {"__call__": __call__})
    return cls(layer, original, sink)


# processors that compute plain softmax attention: an edit may replace them (it computes the same maths)
PLAIN = {"AttnProcessor", "AttnProcessor2_0", "SlicedAttnProcessor", "XFormersAttnProcessor",
         "AttnProcessorNPU", "FusedAttnProcessor2_0"}


def cross_attention(layer: str, original, sink: Sink | None, edit: Edit | None):
    """The processor for a cross-attention module (SD's U-Net, PixArt) in place of ``original``: ours where
    it computes what ``original`` did, else ``original`` wrapped; an edit refuses (CaptureError) a
    processor that changes the attention in its own way."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from .families.base import CaptureError

    if edit is None:
        if type(original) is AttnProcessor2_0:  # computed inline: the maps cost no extra projection
            return CrossAttnProcessor(layer, sink)
        return wrap(layer, original, sink)
    cls = type(original)
    if cls.__name__ in PLAIN and cls.__module__.startswith("diffusers."):
        return CrossAttnProcessor(layer, sink, edit)
    raise CaptureError(
        f"layer {layer!r} runs a {cls.__name__}, which changes the attention in its own way: an edit would "
        "replace it and silently drop its effect. Edit other layers (layers=...), or remove it first (e.g. "
        "pipe.unload_ip_adapter(), or pipe.unet.set_default_attn_processor())."
    )


class SelfAttention:
    """The sink a self-attention module's processor gets (U-Net and PixArt ``attn1``): what it keeps, its
    query and the image keys, goes to the recorder's self-attention maps."""

    softmax_over = "text"

    def __init__(self, sink):
        self.sink = sink

    def wants(self, layer: str) -> bool:
        return self.sink.wants_self(layer)

    def keep(self, layer: str, attn, query: torch.Tensor, key: torch.Tensor, probs=None,
             text_mass=None) -> None:
        self.sink.keep_self(layer, attn, query, key)


def is_ours(processor) -> bool:
    """Whether ``processor`` was installed by diffviz (a trace or an edit is running)."""
    return isinstance(processor, (CrossAttnProcessor, Wrapped))
