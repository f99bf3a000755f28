"""Joint attention (SD3's MMDiT blocks, Flux's double- and single-stream blocks): the maths of word maps.

In joint attention the image and text tokens are one sequence and one softmax runs over all keys. A word
map is the image-query rows and text-key columns of it. diffviz stores them **renormalised over the text
keys** by default (``diffviz.trace(pipe, softmax_over="text")``): ``p_text = softmax over the text keys
of q . k * scale`` for each image query, so every pixel's attention over the prompt sums to 1, which is
what a cross-attention map of Stable Diffusion means, and maps of SD, SD3, Flux and PixArt read the same
way. It needs only the [image x text] scores: the [image x image] block, 4096 x 4096 per head and layer
at 1024 px, is never computed by the capture. ``softmax_over="all"`` stores the raw share instead,
``text_mass * p_text`` (below): a pixel that mostly attends to the image gives every word little, so
maps weigh the pixels that read the prompt most; it is what a tool that slices the full softmax shows.

The softmax over *all* keys restricted to the text columns is ``text_mass * p_text``, where
``text_mass = exp(lse_text - lse_all)`` is the share of a pixel's attention that goes to the prompt at
all. ``lse_all`` needs every key; ``logsumexp`` computes it in chunks of queries so the whole
[query x key] matrix is never held (on the CPU as on a GPU). Edits use it: an edit changes ``p_text``
and the layer's output moves by ``text_mass * (p_new - p_text) @ v_text``, exactly what the softmax
over all keys with the edited text columns gives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CHUNK_ELEMENTS = 1 << 24  # scores held at once by ``logsumexp`` (64 MiB of float32)


def logsumexp(query: torch.Tensor, key: torch.Tensor, scale: float,
              chunk: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """[..., q] float32: log sum_k exp(query . key * scale) over every key, for q [..., q, d], k [..., k, d];
    at most ``chunk`` scores exist at once."""
    lead = query.shape[:-2]
    rows = max(1, chunk // max(1, key.shape[-2] * max(1, lead.numel())))
    out = [((q @ key.transpose(-1, -2)).float() * scale).logsumexp(-1) for q in query.split(rows, dim=-2)]
    return torch.cat(out, dim=-1)


def text_scores(query: torch.Tensor, key_text: torch.Tensor, scale: float) -> torch.Tensor:
    """[b, head, q, text] float32 scores of image queries [b, head, q, d] against text keys
    [b, head, text, d]."""
    return (query @ key_text.transpose(-1, -2)).float() * scale


def text_mass(query: torch.Tensor, key_image: torch.Tensor, key_text: torch.Tensor,
              scale: float) -> torch.Tensor:
    """[b, head, q] float32 in [0, 1]: the share of each image query's attention (softmax over image
    and text keys together) that goes to the text keys."""
    lse_text = text_scores(query, key_text, scale).logsumexp(-1)
    lse_all = torch.logaddexp(lse_text, logsumexp(query, key_image, scale))
    return (lse_text - lse_all).exp()


def keep(sink, layer: str, attn, query: torch.Tensor, key_image: torch.Tensor, key_text: torch.Tensor,
         probs: torch.Tensor | None) -> None:
    """Hand ``sink`` a joint layer's image queries [b, head, q, d] and text keys [b, head, text, d] (or the
    edited ``probs``), with each query's ``text_mass`` when the sink stores shares of the softmax over
    all keys (``softmax_over="all"``)."""
    mass = text_mass(query, key_image, key_text, attn.scale) if sink.softmax_over == "all" else None
    sink.keep(layer, attn, query, key_text, probs, mass)


def edited(out_image: torch.Tensor, query: torch.Tensor, key_image: torch.Tensor, key_text: torch.Tensor,
           value_text: torch.Tensor, scale: float,
           edit: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, probs): the image queries' attention output [b, head, q, d] after ``edit`` changed their
    text-renormalised probabilities [b, head, q, text] (see the module docstring), and the edited
    probabilities. ``out_image`` is the unedited output."""
    scores = text_scores(query, key_text, scale)
    probs = scores.softmax(-1)
    new = edit(probs)
    lse_text = scores.logsumexp(-1)
    mass = (lse_text - torch.logaddexp(lse_text, logsumexp(query, key_image, scale))).exp()
    delta = (mass[..., None] * (new - probs)) @ value_text.float()
    return out_image + delta.to(out_image.dtype), new
