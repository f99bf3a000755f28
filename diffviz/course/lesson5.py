"""Lesson 5, attention is not attribution (notebooks/05_attention_vs_attribution.ipynb): the padding
intervention, and the exercise checks.

Each check recomputes the right answer from the student's own trace, attribution and measurements,
so it holds for any model, trained or not. ``solution("top_attention")`` (or ``"shares_sum"``,
``"better_predictor"``) prints a worked answer, for whoever asks for it on purpose.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..attribution import Attribution, Region, region_attention, region_mask, spearman
from ..capture.families import family_of
from ..traces import Trace
from . import Solutions, predicted, verdict


def context_shares(trace: Trace) -> dict[str, float]:
    """How each pixel's attention splits over the context positions, as shares summing to 1: "start"
    (the start token), "words" (the prompt's word tokens), "end" (the first end token) and "padding" (the
    end tokens after it). Averaged over steps, heads, pixels and layers (each layer counts once); needs a
    trace captured with ``tokens="all"``."""
    positions = [t.position for t in trace.tokens]
    if positions != list(range(len(positions))):
        raise ValueError("this trace does not hold every context position: capture it with "
                         "diffviz.trace(pipe, tokens='all').")
    rest = [t.position for t in trace.tokens if t.word is None and t.position > 0]
    groups = {"start": [0], "words": [t.position for t in trace.tokens if t.word is not None],
              "end": rest[:1], "padding": rest[1:]}
    return {name: float(torch.stack([a[:, :, idx].float().sum(2).mean() for a in trace.attn.values()]).mean())
            if idx else 0.0 for name, idx in groups.items()}


def padded(pipe, trace: Trace, word: str | int, *, seed: int = 0, **call_kwargs):
    """Generate ``trace.prompt`` again with ``word``'s tokens replaced by the padding token (the baseline
    integrated gradients uses for that word); attention is not touched. ``pipe``: the pipeline that made
    the trace (Stable Diffusion family: SD 1/2, SDXL, the classroom model). -> PIL image."""
    if getattr(pipe, "unet", None) is None:
        raise ValueError("padded() needs a Stable Diffusion pipeline (one with a U-Net).")
    model = family_of(pipe).step_model(trace, 0, "x0")
    positions = [t.position for t in trace.tokens if t.word == trace.word_indices(word)[0]]
    with torch.no_grad():
        embeds, pooled = model.encode(*model.baseline_ids(positions))
    if pooled is not None:
        call_kwargs["pooled_prompt_embeds"] = pooled
    return pipe(prompt_embeds=embeds, generator=torch.Generator().manual_seed(seed), **call_kwargs).images[0]


def region_change(image, base, region: Region = None) -> float:
    """Mean |ΔRGB| (in [0, 1]) between two images ([H, W, 3] uint8, PIL or tensor) inside ``region``
    (a box (x0, y0, x1, y1) in pixels, a [H, W] mask, or None for the whole image)."""
    a, b = (np.asarray(x, dtype=np.float32)[..., :3] / 255 for x in (image, base))
    weights = region_mask(region, a.shape[0], a.shape[1]).numpy()
    return float((np.abs(a - b).mean(-1) * weights).sum() / weights.sum())


def _word(answer) -> str | None:
    return None if answer is None else str(answer).strip().lower()


def check_top_attention(answer: str | None, trace: Trace, region: Region, prediction=None) -> bool:
    """Exercise 1: the word with the most attention inside ``region``, averaged over every step and layer."""
    att = region_attention(trace, region)  # [word]
    best = {trace.words[i].lower() for i in range(len(trace.words)) if att[i] >= att.max() - 1e-9}
    done = verdict(_word(answer), _word(answer) in best,
                   f"{answer!r} gets the most attention inside the region "
                   f"({float(att.max()):.3f} on average).",
                   "diffviz.attribution.region_attention(trace, region) gives one number per word of "
                   "trace.words; take the word with the largest.")
    if done:
        predicted(prediction, _word(prediction) in best, f"{answer!r} gets the most attention")
    return done


def check_shares_sum(answer: float | None, attribution: Attribution, prediction=None) -> bool:
    """Exercise 2: the words' integrated-gradients scores summed, as a share of ``attribution.total``."""
    right = float(attribution.word_scores.sum()) / attribution.total if attribution.total else float("nan")
    ok = (answer is not None and math.isfinite(right)
          and abs(float(answer) - right) <= 0.01 + 0.01 * abs(right))
    done = verdict(answer, ok, f"the word scores add up to {right:.1%} of the total change.",
                   "add up the words' scores and give the sum as a share of attribution.total "
                   "(a ratio: 0.5 for half, not 50).")
    if done:
        close = prediction is not None and abs(float(prediction) - right) <= 0.1
        predicted(prediction, close, f"the shares add up to {right:.2f}, 1 up to captum's error "
                                    f"(delta {attribution.delta:.2g} of {attribution.total:.3g})")
    return done


def check_better_predictor(answer: str | None, attention: torch.Tensor, attribution: torch.Tensor,
                           effect: torch.Tensor, prediction=None) -> bool:
    """Exercise 3: which ranking of the words, "attention" or "attribution", agrees better (Spearman) with
    the measured ``effect`` of each word. Ties (or an undefined correlation) accept either."""
    r_att, r_attr = spearman(attention, effect), spearman(attribution, effect)
    a = _word(answer)
    valid = a in ("attention", "attribution")
    tie = math.isnan(r_att) or math.isnan(r_attr) or abs(r_att - r_attr) < 1e-9
    better = "attention" if r_att > r_attr else "attribution"
    done = verdict(a, valid and (tie or a == better),
                   f"Spearman with the effect: attention {r_att:+.2f}, attribution {r_attr:+.2f}.",
                   "answer 'attention' or 'attribution': compute diffviz.attribution.spearman(x, effect) for "
                   "x = the attention per word and x = attribution.word_scores, and pick the larger.")
    if done:
        predicted(prediction, tie or _word(prediction) == better,
                  f"{better} ranks the words more like the effect")
    return done


solution = Solutions(
    top_attention="""\
att = region_attention(tr, region)  # [word], in the order of tr.words
answer = tr.words[int(att.argmax())]""",
    shares_sum="""\
answer = float(a.word_scores.sum()) / a.total  # completeness: about 1, up to captum's delta""",
    better_predictor="""\
r_att, r_attr = spearman(att, suppressed), spearman(a.word_scores, suppressed)  # rank correlations
answer = "attention" if r_att > r_attr else "attribution"  # the predictor that ranks more like the effect""",
)

__all__ = ["check_better_predictor", "check_shares_sum", "check_top_attention", "context_shares", "padded",
           "region_change", "solution"]
