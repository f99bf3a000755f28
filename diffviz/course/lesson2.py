"""Lesson 2, what each word does: reference answers and exercise checks."""

from __future__ import annotations

import torch

from .. import heatmap
from ..trace import Trace
from . import verdict


def top_word(trace: Trace) -> str:
    """The word (one occurrence) that receives the most attention over all steps, layers and pixels."""
    return trace.words[int(heatmap.word_mass(trace).sum(0).argmax())]


def token_share(trace: Trace, position: int) -> float:
    """Mean attention probability of the token at context ``position`` (0: start token), averaged over
    steps, heads, pixels and layers (each layer counts once). Needs a trace with that position stored."""
    i = trace.token_indices(tokens=position)[0]
    return float(torch.stack([a[:, :, i].float().mean() for a in trace.attn.values()]).mean())


def peak_step(trace: Trace, word: str) -> int:
    """The step at which ``word`` (all its occurrences) receives the most attention."""
    mass = heatmap.word_mass(trace)[:, trace.word_indices(word)].sum(1)
    return int(mass.argmax())


def check_top_word(answer, trace: Trace) -> bool:
    """``answer``: str, the word with the largest total attention."""
    right = top_word(trace)
    ok = answer is not None and str(answer).strip().lower() == right.lower()
    return verdict(answer, ok, f"{right!r} takes the most attention of all the prompt's words.",
                   "diffviz.heatmap.word_mass(trace) is [step, word]; sum over steps and take the argmax; "
                   "trace.words turns an index into a word.")


def check_start_share(answer, trace: Trace) -> bool:
    """``answer``: float in [0, 1], the start token's share of the attention (trace captured with tokens="all")."""
    if answer is not None and 0 not in {t.position for t in trace.tokens}:
        raise ValueError("this trace has no start token; capture it with diffviz.trace(pipe, tokens='all').")
    right = token_share(trace, 0) if answer is not None else 0.0
    ok = answer is not None and abs(float(answer) - right) <= 0.01
    return verdict(answer, ok, f"the start token takes {right:.1%} of every pixel's attention on average.",
                   "find the stored index i of the token with position 0; for each layer take "
                   "trace.attn[layer][:, :, i].mean(), then average over layers. It is a fraction, 0..1.")


def check_peak_step(answer, trace: Trace, word: str) -> bool:
    """``answer``: int, the step at which ``word`` receives the most attention."""
    right = peak_step(trace, word)
    ok = answer is not None and int(answer) == right
    return verdict(answer, ok, f"{word!r} pulls the most attention at step {right} of {trace.num_steps}.",
                   f"take the column(s) of diffviz.heatmap.word_mass(trace) for {word!r} "
                   "(trace.word_indices gives them), sum them, and find the argmax over steps.")
