"""Lesson 4, comparing prompts and seeds: distances, colour counts, reference answers and exercise checks.

``solution(name)`` prints a worked answer ("seed_vs_word", "red_share"), for whoever asks for it on purpose.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from . import Solutions, predicted, verdict
from .lesson7 import colourless_share  # the data's colours for a colourless caption, per shape


def as_array(image) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1] from a PIL image, uint8 array or tensor."""
    return np.asarray(image, dtype=np.float32)[..., :3] / 255.0


def distance(a, b) -> float:
    """Root-mean-square pixel difference of two images, in [0, 1] (0: identical)."""
    return float(np.sqrt(((as_array(a) - as_array(b)) ** 2).mean()))


def diversity(images: Sequence) -> float:
    """Mean pairwise ``distance`` of a set of images: 0 when every image is the same (mode collapse)."""
    if len(images) < 2:
        raise ValueError(f"diversity needs at least 2 images, got {len(images)}.")
    return float(np.mean([distance(a, b) for a, b in combinations(images, 2)]))


def colour_shares(images: Sequence) -> dict[str, float]:
    """Share of ``images`` whose largest object (found by the classroom judge) has each colour, for every
    classroom colour and "none" (no object found); the shares sum to 1."""
    from ..classroom.data import COLOURS
    from ..classroom.judge import find_objects

    if not images:
        raise ValueError("colour_shares needs at least one image.")
    counts = Counter((found[0].colour if found else "none") for found in map(find_objects, images))
    return {c: counts[c] / len(images) for c in [*COLOURS, "none"]}


def effective_colours(shares: dict[str, float]) -> float:
    """The effective number of colours of a colour distribution (``colour_shares`` or ``colourless_share``):
    exp of its entropy over the colours, "none" left out. 1: one colour only (collapse); n: n colours
    equally."""
    p = np.array([v for c, v in shares.items() if c != "none" and v > 0])
    if not len(p):
        return 0.0
    p = p / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def check_seed_vs_word(answer, base, word_changed, seed_changed, prediction=None) -> bool:
    """``answer``: float, distance(base, seed_changed) / distance(base, word_changed). ``prediction``:
    "seed" or "word", which the student expected to move the picture more."""
    right = distance(base, seed_changed) / max(distance(base, word_changed), 1e-12)
    ok = answer is not None and abs(float(answer) - right) <= 0.01 * max(1.0, right)
    more = "seed" if right > 1 else "word"
    done = verdict(answer, ok, f"the ratio is {right:.2f}: changing the {more} moves the picture more.",
                   "lesson4.distance(base, seed_changed) / lesson4.distance(base, word_changed).")
    if done:
        predicted(prediction, str(prediction).strip().lower() == more, f"the {more} moves it more")
    return done


def check_red_share(answer, images: Sequence, shape: str, prediction=None) -> bool:
    """``answer``: the share (0..1) of ``images`` whose largest object is red. ``prediction``: the share the
    student expected; it counts as right when it falls on the same side of the data's red share of
    ``shape`` (``colourless_share``) as the measurement."""
    right = colour_shares(images)["red"]
    ok = answer is not None and abs(float(answer) - right) <= 1e-6 + 0.5 / len(images)
    done = verdict(answer, ok, f"{right:.0%} of the pictures are red.",
                   "lesson4.colour_shares(pictures) gives each colour's share; "
                   "take 'red' (a share: 0.5, not 50).")
    if done:
        data = colourless_share(shape)["red"]
        side = lambda x: "above" if x > data else "below"
        close = prediction is not None and side(float(prediction)) == side(right)
        predicted(prediction, close, f"red {right:.0%}, {side(right)} the data's {data:.0%}")
    return done


def training_pictures(caption: str, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` new classroom training pictures ([H, W, 3] uint8) for ``caption``, drawn the way the training
    data draws them: free layout, and a size or colour the caption leaves open drawn as in training."""
    from ..classroom.data import SIZES, Obj, make_scene, parse_caption

    objects, relation = parse_caption(caption)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        objs = []
        for o in objects:
            colours, p = zip(*colourless_share(o["shape"]).items())
            colour = o["colour"] or colours[rng.choice(len(colours), p=np.array(p))]
            size = o["size"] or list(SIZES)[rng.integers(len(SIZES))]
            objs.append(Obj(o["shape"], colour, size, colour_named=o["colour"] is not None,
                            size_named=o["size"] is not None))
        out.append(make_scene(objs, relation, rng).image)
    return out


solution = Solutions(
    seed_vs_word="""\
# A against the next seed's picture of the same prompt, over A against B (one word changed)
answer = lesson4.distance(a.image, same_prompt[SEED + 1]) / lesson4.distance(a.image, b.image)""",
    red_share="""\
answer = lesson4.colour_shares(squares)["red"]  # a share 0..1 of the pictures""",
)
