"""Checks for lesson 9, your own checkpoint (notebooks/09_your_checkpoint.ipynb).

Without a checkpoint (``DIFFVIZ_MODEL`` unset, as in CI) the lesson has no trace: every check then says
it was skipped and returns False, so the notebook still runs top to bottom.
"""

from __future__ import annotations

from collections import Counter

from ..capture import estimate_bytes
from ..pipelines import MODEL_ENV
from ..traces import Trace
from . import verdict

SKIPPED = (f"skipped: set {MODEL_ENV}=/path/to/checkpoint (a diffusers folder with model_index.json) and "
           "restart the kernel to run this lesson on your own checkpoint "
           "(see 'What this lesson needs' at the top).")


def _skipped(trace) -> bool:
    if trace is None:
        print(SKIPPED)
        return True
    return False


def split_words(trace: Trace) -> list[str]:
    """Words of the prompt that the tokenizer split into more than one token, in prompt order."""
    counts = Counter(t.word for t in trace.tokens if t.word is not None)
    return [w for i, w in enumerate(trace.words) if counts[i] > 1]


def check_split_words(answer: list[str] | None, trace: Trace | None) -> bool:
    """Exercise 1: the words split into several subword tokens (a list, possibly empty)."""
    if _skipped(trace):
        return False
    right = split_words(trace)
    ok = answer is not None and sorted(w.lower() for w in answer) == sorted(w.lower() for w in right)
    return verdict(answer, ok, f"split words: {right or 'none'}; their maps are the sum over their tokens.",
                   "trace.tokens lists every stored token with .word, an index into trace.words: a word "
                   "with several tokens was split. Answer a list of words ([] if none).")


def resolutions(trace: Trace) -> set[str]:
    """The attention map sizes of the captured layers, as "HxW" strings."""
    return {layer.resolution for layer in trace.layers}


def check_resolutions(answer, trace: Trace | None) -> bool:
    """Exercise 2: the set of attention map resolutions, e.g. {"64x64", "32x32"}."""
    if _skipped(trace):
        return False
    right = resolutions(trace)
    ok = answer is not None and {str(a).replace(" ", "") for a in answer} == right
    return verdict(answer, ok, f"resolutions {sorted(right, key=lambda r: -int(r.split('x')[0]))} "
                               f"(latents {trace.latents.shape[-2]}x{trace.latents.shape[-1]}).",
                   "each Layer in trace.layers has .resolution ('HxW'); answer the set of them.")


def attention_megabytes(pipe, trace: Trace, heads: bool = True) -> float:
    """MB (1e6 bytes) the attention maps of a capture like ``trace`` would take, every head kept or not."""
    est = estimate_bytes(pipe, trace.height, trace.width, trace.num_steps, len(trace.tokens), heads=heads)
    return est["attention"] / 1e6


def check_heads_megabytes(answer: float | None, pipe, trace: Trace | None) -> bool:
    """Exercise 3: MB of attention a capture of the same generation with ``heads=True`` would hold."""
    if _skipped(trace):
        return False
    right = attention_megabytes(pipe, trace, heads=True)
    ok = answer is not None and abs(float(answer) - right) <= 0.01 * right + 1e-3
    return verdict(answer, ok, f"{right:.1f} MB with every head, "
                               f"{attention_megabytes(pipe, trace, False):.1f} MB "
                               "with their mean: choose layers= and steps before keeping every head.",
                   "diffviz.estimate_bytes(pipe, trace.height, trace.width, trace.num_steps, "
                   "len(trace.tokens), heads=True)['attention'] / 1e6.")


__all__ = [
    "SKIPPED",
    "attention_megabytes",
    "check_heads_megabytes",
    "check_resolutions",
    "check_split_words",
    "resolutions",
    "split_words",
]
