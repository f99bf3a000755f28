"""Per-head measurements and checks for lesson 8, heads with jobs (notebooks/08_heads.ipynb).

A head's *job profile* is the share of its attention (over the prompt's words) that goes to each kind
of word, averaged over steps, image positions and several traced prompts. The checks recompute the
right answer from the student's own traces and measurements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..trace import Trace
from . import predicted, verdict

Head = tuple[str, int]  # (layer name, head index)


def head_profiles(traces: Sequence[Trace], kinds: Mapping[str, set[str]]) -> tuple[list[Head], list[str], torch.Tensor]:
    """Job profiles of every head of the prompt-reading layers, from traces captured with ``heads=True``.

    ``kinds``: kind name -> the words of that kind (e.g. {"relation": {"left", "of", ...}}). Returns
    (heads, kind names, shares [head, kind]): the share of each head's attention to the prompt's words
    that goes to words of each kind, averaged over the traces (words of no kind count in the total only).
    """
    names = list(kinds)
    heads: list[Head] | None = None
    total = None
    for tr in traces:
        if not tr.options.get("heads"):
            raise ValueError("head profiles need every head: trace with diffviz.trace(pipe, heads=True).")
        labels, rows = [], []
        for layer in tr.layers:
            m = tr.attn[layer.name].float().sum((-2, -1)).mean(0)  # [head, token]: attention mass per token
            word_mass = torch.zeros(m.shape[0], len(tr.words))
            for t, tok in enumerate(tr.tokens):
                if tok.word is not None:
                    word_mass[:, tok.word] += m[:, t]
            share = word_mass / word_mass.sum(1, keepdim=True).clamp_min(1e-12)  # [head, word]
            by_kind = torch.stack([share[:, [i for i, w in enumerate(tr.words) if w.lower() in kinds[k]]].sum(1)
                                   for k in names], 1)  # [head, kind]
            labels += [(layer.name, h) for h in range(m.shape[0])]
            rows.append(by_kind)
        table = torch.cat(rows)
        if heads is not None and labels != heads:
            raise ValueError("the traces have different layers or heads: trace every prompt with the same pipeline.")
        heads, total = labels, table if total is None else total + table
    if heads is None:
        raise ValueError("no traces given.")
    return heads, names, total / len(traces)


def top_head(heads: Sequence[Head], kinds: Sequence[str], shares: torch.Tensor, kind: str) -> Head:
    """The head that gives ``kind`` the largest share of its attention."""
    return heads[int(shares[:, list(kinds).index(kind)].argmax())]


def drawn_right(prompt: str, image) -> bool:
    """Does the classroom judge find ``image`` ([H, W, 3] uint8) drawn as ``prompt``?"""
    from ..classroom import judge

    return bool(judge.judge(prompt, np.asarray(image))["correct"])


def check_total_heads(answer: int | None, trace: Trace, prediction: int | None = None) -> bool:
    """Exercise 1: the number of attention heads in all the captured (prompt-reading) layers together."""
    right = sum(l.heads for l in trace.layers)
    ok = answer is not None and int(answer) == right
    if not verdict(answer, ok, f"{len(trace.layers)} prompt-reading layers with {[l.heads for l in trace.layers]} "
                               f"heads: {right} heads.", "each Layer in trace.layers has a .heads; add them up."):
        return False
    predicted(prediction, prediction is not None and int(prediction) == right, f"{right} heads")
    return True


def check_top_head(answer: Head | None, heads: Sequence[Head], kinds: Sequence[str], shares: torch.Tensor,
                   kind: str) -> bool:
    """Exercise 2: the (layer, head) with the largest share of attention on words of ``kind`` (ties: any)."""
    col = shares[:, list(kinds).index(kind)]
    best = {heads[i] for i in range(len(heads)) if col[i] >= col.max() - 1e-9}
    ok = answer is not None and tuple(answer) in best
    layer, h = heads[int(col.argmax())]
    return verdict(answer, ok, f"head {h} of {layer} gives {float(col.max()):.0%} of its attention to {kind} words "
                               f"(the median head: {float(col.median()):.0%}).",
                   f"answer a tuple (layer name, head index): the row of shares with the largest value in the "
                   f"{kind!r} column; lesson8.top_head does it for you, but try shares[:, k].argmax() first.")


def check_largest_effect(answer: str | None, effects: Mapping[str, float], prediction: str | None = None,
                         resolution: Mapping[str, str] | None = None) -> bool:
    """Exercise 3: the ablation (a key of ``effects``) whose effect is the largest (ties: any).
    ``prediction``: the resolution ("4x4", "8x8") guessed for it first; ``resolution``: key -> its resolution."""
    top = max(effects.values())
    best = {k for k, v in effects.items() if v >= top - 1e-12}
    ok = answer is not None and str(answer) in best
    if not verdict(answer, ok, "effects: " + ", ".join(f"{k} {v:g}" for k, v in effects.items()) + ".",
                   f"answer one of {list(effects)}: the key with the largest value."):
        return False
    if resolution is not None:
        at = sorted({resolution[k] for k in best})
        predicted(prediction, prediction in at, f"the largest effect, {top:g}, at {' and '.join(at)}")
    return True


__all__ = ["Head", "check_largest_effect", "check_top_head", "check_total_heads", "drawn_right", "head_profiles",
           "top_head"]
