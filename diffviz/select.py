"""The selectors of diffviz: which layers, steps and words a call means. Every view, the edits, the
summaries and the capture pick through these three, so a selector reads and fails the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .traces import Layer

Steps = int | slice | Sequence[int] | None
Layers = str | Sequence[str] | None


def select_steps(n: int, steps: Steps = None, *, what: str = "this generation") -> list[int]:
    """Indices of ``steps`` among ``n`` steps: an int, a slice, a list, or None for all; negative counts
    from the end. IndexError naming the range for a step out of it."""
    if steps is None:
        return list(range(n))
    if isinstance(steps, slice):
        return list(range(n))[steps]
    picked = [steps] if isinstance(steps, int) else list(steps)
    for s in picked:
        if not -n <= int(s) < n:
            raise IndexError(f"step {s} is out of range: {what} has {n} steps (0..{n - 1}).")
    return [int(s) % n for s in picked]


def select_layers(layers: Sequence[Layer], wanted: Layers = None, *,
                  what: str = "captured layer") -> list[str]:
    """Names of ``layers`` (in their order) picked by ``wanted``: None for all, or one or several of an
    exact name, a dotted prefix or suffix at a dot ("up_blocks.1" is not "up_blocks.10"; "attn1"), a block
    ("down", "mid", "up"; "joint", "single") or a resolution ("16x16"). The one layer selector of diffviz."""
    if wanted is None:
        return [l.name for l in layers]
    picked: set[str] = set()
    for w in [wanted] if isinstance(wanted, str) else list(wanted):
        hits = {l.name for l in layers
                if w in (l.name, l.block, l.resolution) or l.name.startswith(f"{w}.")
                or l.name.endswith(f".{w}")}
        if not hits:
            blocks = list(dict.fromkeys(l.block for l in layers if l.block))
            sizes = sorted({l.resolution for l in layers}, key=lambda r: -int(r.split("x")[0]))
            raise ValueError(
                f"no {what} matches {w!r}. Give a block {blocks}, a resolution {sizes}, or a module path or "
                f"part of one at a dot, e.g. {layers[0].name!r}."
                if layers else f"there is no {what} to select."
            )
        picked |= hits
    return [l.name for l in layers if l.name in picked]


def find_word(words: Sequence[str], prompt: str, word: str | int) -> list[int]:
    """Indices into ``words`` (the words of ``prompt``) for a word (every occurrence, case-insensitive) or
    a word index; KeyError / IndexError naming the prompt's words."""
    if isinstance(word, int):
        if not 0 <= word < len(words):
            raise IndexError(f"word index {word} is out of range: the prompt has {len(words)} words "
                             f"{list(words)}.")
        return [word]
    hits = [i for i, w in enumerate(words) if w.lower() == str(word).lower().strip()]
    if not hits:
        raise KeyError(f"{word!r} is not a word of the prompt {prompt!r}; its words are {list(words)}.")
    return hits
