"""Checks and small measurements for lesson 6, taking control (notebooks/06_taking_control.ipynb).

The checks recompute the right answer from the student's own images and traces, so they hold for
any model; none asserts what a picture should look like.
"""

from __future__ import annotations

import math

import numpy as np

from ..attribution import Region, region_attention
from ..trace import Trace
from . import verdict


def rgb(image) -> np.ndarray:
    """PIL image or uint8 [H, W, 3] -> float32 [H, W, 3] in [0, 1]."""
    return np.asarray(image, dtype=np.float32)[..., :3] / 255


def foreground(image, threshold: float = 0.2) -> np.ndarray:
    """bool [H, W]: pixels whose colour differs from the background (the median colour of the image's
    border) by more than ``threshold`` (RGB distance, colours in [0, 1])."""
    x = rgb(image)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])  # [pixels, 3]
    return np.linalg.norm(x - np.median(border, 0), axis=-1) > threshold


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool [H, W] masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def box_share(trace: Trace, word: str | int, box: Region, steps=None) -> float:
    """How concentrated ``word``'s attention is inside ``box``: its mean attention inside the box over its
    mean over the whole image, at ``steps`` (1.0: no preference for the box)."""
    i = trace.word_indices(word)[0]
    inside = region_attention(trace, box, steps=steps)[i]
    everywhere = region_attention(trace, None, steps=steps)[i]
    return float(inside / everywhere) if everywhere > 0 else float("nan")


def check_steering(answer: float | None, plain: Trace, steered: Trace, word: str, box: Region, steps) -> bool:
    """Exercise 1: box_share(steered) / box_share(plain) for ``word`` at ``steps`` (the steps left free)."""
    right = box_share(steered, word, box, steps) / box_share(plain, word, box, steps)
    ok = answer is not None and math.isfinite(right) and abs(float(answer) - right) <= 0.02 * abs(right) + 1e-6
    return verdict(answer, ok, f"steering multiplied {word!r}'s attention share inside the box by {right:.2f} "
                               "in the steps it did not touch" + (" (it followed the object)." if right > 1 else "."),
                   "lesson6.box_share(trace, word, BOX, steps=FREE) for the steered trace, divided by the same "
                   "for the plain trace.")


def check_layout(answer: bool | None, source, plain, injected) -> bool:
    """Exercise 2: does the injected image keep the source's layout better (foreground IoU) than a plain
    generation of the new prompt? Equal overlaps accept either answer."""
    fg = foreground(source)
    with_inject, without = iou(fg, foreground(injected)), iou(fg, foreground(plain))
    ok = answer is not None and isinstance(answer, (bool, np.bool_)) and (
        with_inject == without or bool(answer) == (with_inject > without))
    return verdict(answer, ok, f"overlap with the source's objects: injected {with_inject:.2f}, plain {without:.2f}.",
                   "answer True or False: compare lesson6.iou(lesson6.foreground(source), lesson6.foreground(x)) "
                   "for x = the injected image and x = the plain image of the new prompt.")


def check_outside_change(answer: float | None, original, inpainted, mask: np.ndarray) -> bool:
    """Exercise 3: mean |RGB change| (colours in [0, 1]) between ``original`` and ``inpainted`` over the
    pixels *outside* ``mask`` (bool [H, W], True = repainted)."""
    diff = np.abs(rgb(inpainted) - rgb(original)).mean(-1)
    right = float(diff[~np.asarray(mask, bool)].mean())
    ok = answer is not None and abs(float(answer) - right) <= 0.05 * right + 2e-3
    return verdict(answer, ok, f"outside the mask the image changed by {right:.3f} on average "
                               f"(inside: {float(diff[np.asarray(mask, bool)].mean()):.3f}).",
                   "np.abs(lesson6.rgb(inpainted) - lesson6.rgb(original)).mean(-1) is the per-pixel change "
                   "[H, W]; average it where the mask is False.")


__all__ = ["box_share", "check_layout", "check_outside_change", "check_steering", "foreground", "iou", "rgb"]
