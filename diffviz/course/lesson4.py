"""Lesson 4, comparing prompts and seeds: diversity measures, reference answers and exercise checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from . import verdict


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


def check_diversity(answer, images: Sequence) -> bool:
    """``answer``: float, the mean pairwise RMS distance of ``images``."""
    right = diversity(images)
    ok = answer is not None and abs(float(answer) - right) <= 1e-3 + 1e-3 * right
    return verdict(answer, ok, f"the seeds' images are {right:.3f} apart on average (RMS, pixels in 0..1).",
                   "for every pair (itertools.combinations) take lesson4.distance(a, b), then the mean.")


def check_least_diverse(answer, sets: Mapping[float, Sequence]) -> bool:
    """``answer``: the key of ``sets`` (a guidance scale) whose images are the least diverse."""
    scores = {k: diversity(v) for k, v in sets.items()}
    right = min(scores, key=scores.get)
    ok = answer is not None and any(abs(float(answer) - k) < 1e-6 for k in scores if scores[k] == scores[right])
    return verdict(answer, ok, f"guidance {right:g} gives the least diverse set ({scores[right]:.3f}).",
                   "compute lesson4.diversity for each guidance scale's images and take the smallest.")


def check_seed_vs_word(answer, base, word_changed, seed_changed) -> bool:
    """``answer``: float, distance(base, seed_changed) / distance(base, word_changed)."""
    right = distance(base, seed_changed) / max(distance(base, word_changed), 1e-12)
    ok = answer is not None and abs(float(answer) - right) <= 0.01 * max(1.0, right)
    more = "the seed" if right > 1 else "the word"
    return verdict(answer, ok, f"the ratio is {right:.2f}: changing {more} moves the picture more.",
                   "lesson4.distance(base, seed_changed) / lesson4.distance(base, word_changed).")


def training_pictures(caption: str, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` new classroom training pictures ([H, W, 3] uint8) for ``caption``, drawn the way the training
    data draws them: free layout, and a size or colour the caption leaves open drawn as in training."""
    from ..classroom.data import (
        COLOURLESS_DISTRIBUTION,
        HELD_OUT_COMBOS,
        SIZES,
        Obj,
        make_scene,
        parse_caption,
    )

    objects, relation = parse_caption(caption)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        objs = []
        for o in objects:
            colours = [c for c in COLOURLESS_DISTRIBUTION if (c, o["shape"]) not in HELD_OUT_COMBOS]
            p = np.array([COLOURLESS_DISTRIBUTION[c] for c in colours])
            colour = o["colour"] or colours[rng.choice(len(colours), p=p / p.sum())]
            size = o["size"] or list(SIZES)[rng.integers(len(SIZES))]
            objs.append(Obj(o["shape"], colour, size, colour_named=o["colour"] is not None,
                            size_named=o["size"] is not None))
        out.append(make_scene(objs, relation, rng).image)
    return out
