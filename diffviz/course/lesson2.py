"""Lesson 2, what each word does: reference answers and exercise checks.

A ``prediction`` (written before measuring) is compared once the answer is right. ``solution(name)``
prints a worked answer ("top_word", "peak_step", "padding_share"), for whoever asks for it on purpose.
"""

from __future__ import annotations

import torch

from .. import heatmap
from ..traces import Trace
from . import Solutions, predicted, verdict


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


def padding_share(trace: Trace) -> float:
    """Mean attention probability of the end and padding tokens together (every stored position that is
    neither a word nor the start token), averaged over steps, heads and pixels, each layer counting once.
    Needs a trace captured with ``tokens="all"``."""
    idx = [i for i, t in enumerate(trace.tokens) if t.word is None and t.position != 0]
    return float(torch.stack([a[:, :, idx].float().sum(2).mean() for a in trace.attn.values()]).mean())


def check_top_word(answer, trace: Trace, prediction: str | None = None) -> bool:
    """``answer``: str, the word with the largest total attention; ``prediction``: the word guessed before."""
    right = top_word(trace)
    ok = answer is not None and str(answer).strip().lower() == right.lower()
    if not verdict(answer, ok, f"{right!r} takes the most attention of all the prompt's words.",
                   "diffviz.heatmap.word_mass(trace) is [step, word]; sum over steps and take the argmax; "
                   "trace.words turns an index into a word."):
        return False
    close = prediction is not None and str(prediction).strip().lower() == right.lower()
    predicted(prediction, close, f"the most attended word is {right!r}")
    return True


def check_padding_share(answer, trace: Trace, prediction: str | None = None) -> bool:
    """``answer``: float in [0, 1], the end and padding tokens' share of the attention (trace captured with
    tokens="all"); ``prediction``: which takes more, "start" or "padding", guessed before."""
    if answer is not None and not any(t.word is None and t.position != 0 for t in trace.tokens):
        raise ValueError("this trace has no padding tokens; "
                         "capture it with diffviz.trace(pipe, tokens='all').")
    hint = ("take the stored indices i of the tokens that are neither a word nor position 0; for each layer "
            "sum trace.attn[layer][:, :, i] over those tokens and take the mean, then average over layers. "
            "A fraction, 0..1.")
    right = padding_share(trace) if answer is not None else 0.0
    if not verdict(answer, answer is not None and abs(float(answer) - right) <= 0.01,
                   f"end and padding take {right:.1%} of every pixel's attention on average.", hint):
        return False
    start = token_share(trace, 0)
    larger = "padding" if right > start else "start"
    close = prediction is not None and str(prediction).strip().lower() == larger
    predicted(prediction, close, f"the start token takes {start:.1%}, end and padding {right:.1%}")
    return True


def check_peak_step(answer, trace: Trace, word: str, prediction: int | None = None) -> bool:
    """``answer``: int, the step at which ``word`` receives the most attention; ``prediction``: the step
    guessed."""
    right = peak_step(trace, word)
    ok = answer is not None and int(answer) == right
    if not verdict(answer, ok, f"{word!r} pulls the most attention at step {right} of {trace.num_steps}.",
                   f"take the column(s) of diffviz.heatmap.word_mass(trace) for {word!r} "
                   "(trace.word_indices gives them), sum them, and find the argmax over steps."):
        return False
    close = prediction is not None and abs(int(prediction) - right) <= 2
    predicted(prediction, close, f"{word!r} peaks at step {right} of {trace.num_steps}")
    return True


solution = Solutions(
    top_word="""\
total = heatmap.word_mass(trace).sum(0)  # [word]: each word's attention, summed over the steps
answer = trace.words[int(total.argmax())]""",
    peak_step="""\
mass = heatmap.word_mass(trace)[:, trace.word_indices(WORD)].sum(1)  # [step]: WORD, all its occurrences
answer = int(mass.argmax())""",
    padding_share="""\
pad = [i for i, t in enumerate(trace.tokens) if t.word is None and t.position != 0]  # end and padding
per_layer = [a[:, :, pad].float().sum(2).mean() for a in trace.attn.values()]  # [step, head, token, h, w]
answer = float(torch.stack(per_layer).mean())  # each layer counts once""",
)
