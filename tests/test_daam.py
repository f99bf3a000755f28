"""``recipe="daam"`` against DAAM 0.2's own algorithm (castorini/daam: ``UNetCrossAttentionHooker``,
``compute_global_heat_map``, ``compute_word_heat_map``, ``WordHeatMap.expand_as``), re-implemented here
from raw attention probabilities recorded by a processor of its own, so DAAM need not be installed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import diffviz
from diffviz.testing import tiny_pipeline

PROMPT = "a red circle left of a blue square"


class DaamHooker:
    """DAAM's attn2 hook: the conditional half's probabilities per head, summed over steps; the output
    is left to the processor it wraps, so the generation is the untraced one."""

    def __init__(self, name, inner, sums):
        self.name, self.inner, self.sums = name, inner, sums

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)  # [batch * head, hw, 77]
        cond = probs[probs.shape[0] // 2:].float()  # DAAM: "Filter out unconditional"
        side = math.isqrt(cond.shape[1])
        maps = cond.permute(0, 2, 1).reshape(cond.shape[0], cond.shape[2], side, side)  # [head, token, h, w]
        self.sums[self.name] = self.sums.get(self.name, 0) + maps
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


def daam_word_maps(pipe, words: list[str], size: int) -> dict[str, torch.Tensor]:
    """DAAM 0.2's word heat maps for PROMPT at ``size`` px, from a generation seeded 0."""
    sums: dict[str, torch.Tensor] = {}
    saved = dict(pipe.unet.attn_processors)
    hooked = {k: (DaamHooker(k, p, sums) if k.endswith("attn2.processor") and not k.startswith("mid_block")
                  else p)
              for k, p in saved.items()}  # its locator: attn2 of the down and up blocks
    pipe.unet.set_attn_processor(hooked)
    try:
        pipe(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(0), height=size,
             width=size)
    finally:
        pipe.unet.set_attn_processor(saved)
    x = 64 if size == 512 else 96  # latent_hw = 4096 if h == 512 else 9216
    merges = [F.interpolate(m[head][:, None], size=(x, x), mode="bicubic").clamp_(min=0)
              for m in sums.values() if int(math.sqrt(x * x // (m.shape[-1] * m.shape[-2]))) != 8
              for head in range(m.shape[0])]
    global_maps = torch.stack(merges).mean(0)[:, 0]  # [token, x, x]
    tokens = pipe.tokenizer.tokenize(PROMPT)
    out = {}
    for w in words:
        idx = [i + 1 for i, t in enumerate(tokens) if t == f"{w}</w>"]  # compute_token_merge_indices
        im = F.interpolate(global_maps[idx].mean(0)[None, None], size=(size, size), mode="bicubic")[0, 0]
        out[w] = (im - im.min()) / (im.max() - im.min() + 1e-8)
    return out


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


@pytest.fixture(scope="module")
def sdxl():
    pipe = tiny_pipeline("sdxl", "euler")  # heads differ per layer (2 and 4) and it has a mid block
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("heads", [True, False])
def test_the_daam_recipe_reproduces_daam(sdxl, heads):
    words = ["a", "red", "circle", "blue", "square"]
    reference = daam_word_maps(sdxl, words, 64)
    with diffviz.trace(sdxl, heads=heads) as run:
        sdxl(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(0), height=64, width=64)
    tr = run.trace
    for w in words:
        ours = tr.heatmap(w, recipe="daam")
        assert ours.shape == (64, 64)
        assert pearson(ours, reference[w]) > (0.9999 if heads else 0.999), w
    # the default recipe weighs layers equally, includes the mid block and resizes bilinearly: not DAAM's
    assert min(pearson(tr.heatmap(w), reference[w]) for w in words) < 0.99


def test_the_daam_recipe_refuses_layers_it_does_not_read(sdxl):
    with diffviz.trace(sdxl) as run:
        sdxl(PROMPT, num_inference_steps=2, height=64, width=64)
    with pytest.raises(ValueError, match="none of the layers .* is one DAAM reads"):
        run.trace.heatmap("red", layers="mid", recipe="daam")
    with pytest.raises(ValueError, match="recipe must be 'diffviz' or 'daam'"):
        run.trace.heatmap("red", recipe="DAAM")
