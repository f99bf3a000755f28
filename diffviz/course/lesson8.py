"""Per-head measurements and checks for lesson 8, heads with jobs (notebooks/08_heads.ipynb).

A head's *job profile* is the share of its attention (over the prompt's words) that goes to each kind
of word, averaged over steps, image positions and several traced prompts. The checks recompute the
right answer from the student's own traces and measurements. ``solution("top_kind_count")`` (or
``"top_head"``, ``"largest_effect"``) prints a worked answer, for whoever asks for it on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..traces import Trace
from . import Solutions, predicted, verdict

Head = tuple[str, int]  # (layer name, head index)


def head_profiles(traces: Sequence[Trace],
                  kinds: Mapping[str, set[str]]) -> tuple[list[Head], list[str], torch.Tensor]:
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
            by_kind = torch.stack([share[:, [i for i, w in enumerate(tr.words)
                                             if w.lower() in kinds[k]]].sum(1)
                                   for k in names], 1)  # [head, kind]
            labels += [(layer.name, h) for h in range(m.shape[0])]
            rows.append(by_kind)
        table = torch.cat(rows)
        if heads is not None and labels != heads:
            raise ValueError("the traces have different layers or heads: "
                             "trace every prompt with the same pipeline.")
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


def check_top_kind_count(answer: int | None, kinds: Sequence[str], shares: torch.Tensor, kind: str,
                         prediction: int | None = None) -> bool:
    """Exercise 1: how many heads give ``kind`` a larger share of their attention than any other kind."""
    top = shares.argmax(1)
    right = int((top == list(kinds).index(kind)).sum())
    counts = ", ".join(f"{k} {int((top == i).sum())}" for i, k in enumerate(kinds))
    if not verdict(answer, answer is not None and int(answer) == right,
                   f"{right} of {len(top)} heads read {kind} words most (top kind per head: {counts}).",
                   "a row of shares is a head, a column a kind of kinds: find each head's top kind, "
                   f"then count the heads whose top kind is {kind!r}."):
        return False
    predicted(prediction, prediction is not None and abs(int(prediction) - right) <= max(2, 0.2 * right),
              f"{right} of {len(top)} heads")
    return True


def check_top_head(answer: Head | None, heads: Sequence[Head], kinds: Sequence[str], shares: torch.Tensor,
                   kind: str, prediction: str | None = None) -> bool:
    """Exercise 2: the (layer, head) with the largest share of attention on words of ``kind`` (ties: any).
    ``prediction``: the kind of layer guessed for it first, the last part of its name ("attn1", "attn2")."""
    col = shares[:, list(kinds).index(kind)]
    best = {heads[i] for i in range(len(heads)) if col[i] >= col.max() - 1e-9}
    ok = answer is not None and tuple(answer) in best
    layer, h = heads[int(col.argmax())]
    if not verdict(answer, ok, f"head {h} of {layer} gives {float(col.max()):.0%} of its attention "
                               f"to {kind} words (the median head: {float(col.median()):.0%}).",
                   "answer a tuple (layer name, head index) from heads: the head whose row of shares has "
                   f"the largest value in the {kind!r} column (the rows are in the order of heads)."):
        return False
    where = {name.rsplit(".", 1)[-1] for name, _ in best}
    predicted(prediction, prediction in where,
              f"the {kind} head sits in an {' and '.join(sorted(where))} layer")
    return True


def check_largest_effect(answer: str | None, effects: Mapping[str, float],
                         prediction: str | None = None, clear: float = 1.0) -> bool:
    """Exercise 3: the ablation (a key of ``effects``, e.g. "coarse", "fine") whose effect is the largest
    (ties: any), or "same" when it is less than ``clear`` times the next largest (``clear=1``: the largest
    always wins). ``prediction``: the answer guessed first."""
    top = max(effects.values())
    best = {k for k, v in effects.items() if v >= top - 1e-12}
    rest = [v for k, v in effects.items() if k not in best]
    ratio = top / max(rest) if rest and max(rest) > 0 else float("inf")
    if len(best) > 1 and clear > 1 or ratio < clear:
        best = {"same"}
    margin = f" ({ratio:.1f}x the next)" if rest and max(rest) > 0 else ""
    options = list(effects) + (["same"] if clear > 1 else [])
    rule = f": none is {clear:g} times the next" if best == {"same"} else ""
    ok = answer is not None and str(answer) in best
    if not verdict(answer, ok,
                   "effects: " + ", ".join(f"{k} {v:.3g}" for k, v in effects.items()) + margin
                   + (f"; the answer is 'same'{rule}." if best == {"same"} else "."),
                   f"answer one of {options}: the key with the largest value"
                   + (f", or 'same' if it is not {clear:g} times the next." if clear > 1 else ".")):
        return False
    predicted(prediction, prediction in best,
              f"about the same effect{rule}" if best == {"same"}
              else f"the largest effect, {top:.3g}, from {' and '.join(sorted(best))}")
    return True


solution = Solutions(
    top_kind_count="""\
top = shares.argmax(1)  # each head's top kind, an index into kinds
answer = int((top == kinds.index("colour")).sum())""",
    top_head="""\
colour = shares[:, kinds.index("colour")]  # each head's share of attention on colour words
answer = heads[int(colour.argmax())]  # (layer name, head index)""",
    largest_effect="""\
big, small = sorted(effects, key=effects.get, reverse=True)  # the larger effect first
answer = big if effects[big] >= 1.5 * effects[small] else "same"  # the exercise's rule: 1.5 times""",
)

__all__ = ["Head", "check_largest_effect", "check_top_head", "check_top_kind_count", "drawn_right",
           "head_profiles", "solution", "top_head"]
