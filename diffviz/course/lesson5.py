"""Checks for lesson 5, attention is not attribution (notebooks/05_attention_vs_attribution.ipynb).

Each check recomputes the right answer from the student's own trace, attribution and measurements,
so it holds for any model, trained or not.
"""

from __future__ import annotations

import math

import torch

from ..attribution import Attribution, Region, region_attention, spearman
from ..trace import Trace
from . import verdict


def _word(answer) -> str | None:
    return None if answer is None else str(answer).strip().lower()


def check_top_attention(answer: str | None, trace: Trace, region: Region) -> bool:
    """Exercise 1: the word with the most attention inside ``region``, averaged over every step and layer."""
    att = region_attention(trace, region)  # [word]
    best = {trace.words[i].lower() for i in range(len(trace.words)) if att[i] >= att.max() - 1e-9}
    return verdict(_word(answer), _word(answer) in best,
                   f"{answer!r} gets the most attention inside the region ({float(att.max()):.3f} on average).",
                   "diffviz.attribution.region_attention(trace, region) gives one number per word of "
                   "trace.words; take the word with the largest.")


def check_share(answer: float | None, attribution: Attribution, word: str) -> bool:
    """Exercise 2: the share of the region's total change that integrated gradients gives ``word``."""
    i = [w.lower() for w in attribution.words].index(word.lower())
    right = float(attribution.word_scores[i]) / attribution.total if attribution.total else float("nan")
    ok = answer is not None and math.isfinite(right) and abs(float(answer) - right) <= 0.01 + 0.01 * abs(right)
    return verdict(answer, ok, f"IG gives {word!r} {right:.1%} of the change the prompt makes in the region.",
                   f"divide the word's score (attribution.word_scores at the index of {word!r} in "
                   "attribution.words) by attribution.total. A share, not a percentage: 0.25, not 25.")


def check_better_predictor(answer: str | None, attention: torch.Tensor, attribution: torch.Tensor,
                           effect: torch.Tensor) -> bool:
    """Exercise 3: which ranking of the words, "attention" or "attribution", agrees better (Spearman) with
    the measured effect of suppressing each word. Ties (or an undefined correlation) accept either."""
    r_att, r_attr = spearman(attention, effect), spearman(attribution, effect)
    a = _word(answer)
    valid = a in ("attention", "attribution")
    if math.isnan(r_att) or math.isnan(r_attr) or abs(r_att - r_attr) < 1e-9:
        ok = valid
    else:
        ok = a == ("attention" if r_att > r_attr else "attribution")
    return verdict(a, ok, f"Spearman with the suppression effect: attention {r_att:+.2f}, attribution {r_attr:+.2f}.",
                   "answer 'attention' or 'attribution': compute diffviz.attribution.spearman(x, effect) for "
                   "x = the attention per word and x = attribution.word_scores, and pick the larger.")


__all__ = ["check_better_predictor", "check_share", "check_top_attention"]
