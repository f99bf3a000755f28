"""Checks for lesson 9, your own checkpoint (notebooks/09_your_checkpoint.ipynb).

The lesson runs on the classroom model by default and on the checkpoint named by ``DIFFVIZ_MODEL`` when it
is set. Each check recomputes the right answer from the student's own trace and pipeline, so it holds on
either model. ``solution(name)`` prints a worked answer ("split_words", "resolutions", "heads_megabytes"),
for whoever asks for it on purpose.
"""

from __future__ import annotations

from collections import Counter

from ..capture import estimate_bytes
from ..traces import Trace
from . import Solutions, predicted, verdict


def _words(words) -> list[str]:
    return sorted(str(w).strip().lower() for w in words)


def split_words(trace: Trace) -> list[str]:
    """Words of the prompt that the tokenizer split into more than one token, in prompt order."""
    counts = Counter(t.word for t in trace.tokens if t.word is not None)
    return [w for i, w in enumerate(trace.words) if counts[i] > 1]


def check_split_words(answer: list[str] | None, trace: Trace, prediction: list[str] | None = None) -> bool:
    """Exercise 1: the words of ``trace.prompt`` split into several tokens (a list, possibly empty).
    ``prediction``: the list guessed first, from the words alone."""
    right = split_words(trace)
    ok = answer is not None and not isinstance(answer, str) and _words(answer) == _words(right)
    done = verdict(answer, ok, f"split words: {right or 'none'}; each one's map is the sum over its tokens.",
                   "trace.tokens lists every stored token, and its .word is an index into trace.words "
                   "(None for a token of no word): a word that owns more than one token was split. "
                   "Answer a list of words ([] if none).")
    if done:
        close = (prediction is not None and not isinstance(prediction, str)
                 and _words(prediction) == _words(right))
        predicted(prediction, close, f"the tokenizer split {right or 'no word'}")
    return done


def resolutions(trace: Trace) -> set[str]:
    """The attention map sizes of the captured layers, as "HxW" strings."""
    return {layer.resolution for layer in trace.layers}


def layers_per_resolution(trace: Trace) -> dict[str, int]:
    """How many captured prompt-reading layers work at each map size: {"HxW": count}."""
    return dict(Counter(layer.resolution for layer in trace.layers))


def _counts(answer) -> dict[str, int] | None:
    try:
        return {str(k).replace(" ", ""): int(v) for k, v in dict(answer).items()}
    except (TypeError, ValueError):
        return None


def finest_or_coarsest(trace: Trace) -> str:
    """Where the model reads the prompt in more layers: "finest", "coarsest" or "equally" (its finest against
    its coarsest resolution)."""
    counts = layers_per_resolution(trace)
    order = sorted(counts, key=lambda r: -int(r.split("x")[0]))
    fine, coarse = counts[order[0]], counts[order[-1]]
    return "equally" if fine == coarse else "finest" if fine > coarse else "coarsest"


def check_resolutions(answer: dict[str, int] | None, trace: Trace, prediction: str | None = None) -> bool:
    """Exercise 2: how many prompt-reading layers work at each resolution, e.g. {"64x64": 5, "8x8": 1}.
    ``prediction``: guessed first, does the model read the prompt in more layers at its "finest" or its
    "coarsest" resolution, or "equally"?"""
    right = layers_per_resolution(trace)
    ok = answer is not None and _counts(answer) == right
    order = sorted(right, key=lambda r: -int(r.split("x")[0]))
    done = verdict(answer, ok, "layers per resolution: " + ", ".join(f"{r} {right[r]}" for r in order)
                   + f" ({len(trace.layers)} in all, latents {trace.latents.shape[-2]}x"
                   f"{trace.latents.shape[-1]}).",
                   "each Layer of trace.layers has a .resolution ('HxW'); count the layers of each "
                   "resolution and answer a dict from resolution to count.")
    if done:
        where = finest_or_coarsest(trace)
        measured = (f"{right[order[0]]} layers at the finest resolution ({order[0]}), "
                    f"{right[order[-1]]} at the coarsest ({order[-1]})")
        predicted(prediction, str(prediction).strip().lower() == where, measured)
    return done


def attention_megabytes(pipe, trace: Trace, heads: bool = True, scale: int = 1) -> float:
    """MB (1e6 bytes) the attention maps of a capture like ``trace`` would take, every head kept or not,
    at ``scale`` times the trace's image side (same prompt, steps and layers)."""
    est = estimate_bytes(pipe, trace.height * scale, trace.width * scale, trace.num_steps, len(trace.tokens),
                         heads=heads)
    return est["attention"] / 1e6


def check_heads_megabytes(answer: float | None, pipe, trace: Trace, prediction: float | None = None) -> bool:
    """Exercise 3: MB of attention a capture of the same prompt and steps would hold with ``heads=True`` at
    twice the image's side. ``prediction``: the factor guessed first, over the same capture at the trace's
    own size."""
    right = attention_megabytes(pipe, trace, heads=True, scale=2)
    base = attention_megabytes(pipe, trace, heads=True)
    try:
        ok = answer is not None and abs(float(answer) - right) <= 0.01 * right + 1e-3
    except (TypeError, ValueError):
        ok = False
    done = verdict(answer, ok, f"{right:.2f} MB at {2 * trace.width}x{2 * trace.height} px with every head, "
                               f"against {base:.2f} MB at {trace.width}x{trace.height} px: "
                               f"{right / base:.1f} times as much.",
                   "diffviz.estimate_bytes takes the image's height= and width= in pixels; ask it with "
                   "heads=True, the trace's number of steps and its number of stored tokens, and read "
                   "its 'attention' entry (bytes; 1 MB = 1e6 bytes).")
    if done:
        try:
            close = prediction is not None and abs(float(prediction) - right / base) <= 0.1 * right / base
        except (TypeError, ValueError):
            close = False
        predicted(prediction, close, f"twice the side, {right / base:.1f} times the attention bytes")
    return done


solution = Solutions(
    split_words="""\
tokens_of = {}  # word index -> how many stored tokens belong to it
for t in tr_words.tokens:
    if t.word is not None:
        tokens_of[t.word] = tokens_of.get(t.word, 0) + 1
answer = [w for i, w in enumerate(tr_words.words) if tokens_of.get(i, 0) > 1]""",
    resolutions="""\
answer = {}
for layer in tr.layers:
    answer[layer.resolution] = answer.get(layer.resolution, 0) + 1""",
    heads_megabytes="""\
est = diffviz.estimate_bytes(pipe, 2 * tr.height, 2 * tr.width, tr.num_steps, len(tr.tokens), heads=True)
answer = est["attention"] / 1e6  # bytes -> MB""",
)


__all__ = [
    "attention_megabytes",
    "check_heads_megabytes",
    "check_resolutions",
    "check_split_words",
    "finest_or_coarsest",
    "layers_per_resolution",
    "resolutions",
    "solution",
    "split_words",
]
