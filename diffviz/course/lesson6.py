"""Checks and small measurements for lesson 6, taking control (notebooks/06_taking_control.ipynb).

The checks recompute the right answer from the student's own images (with the classroom judge where
they count objects), so they hold for whatever the model drew; none asserts what a picture should show.
``solution("count")`` (or ``"landed"``, ``"change"``) prints a worked answer, for whoever asks for it on
purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import Solutions, predicted, verdict

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels


def rgb(image) -> np.ndarray:
    """PIL image or uint8 [H, W, 3] -> float32 [H, W, 3] in [0, 1]."""
    return np.asarray(image, dtype=np.float32)[..., :3] / 255


def count(image, shape: str) -> int:
    """How many objects of ``shape`` the classroom judge finds in ``image``."""
    from ..classroom import judge

    return sum(f.shape == shape for f in judge.find_objects(np.asarray(image)))


def lands_in(image, box: Box, shape: str, colour: str | None = None) -> bool:
    """Does the judge find an object of ``shape`` (and ``colour``, if given) whose centre lies inside
    ``box`` (x0, y0, x1, y1 pixels, edges excluded)?"""
    from ..classroom import judge

    x0, y0, x1, y1 = box
    return any(f.shape == shape and colour in (None, f.colour)
               and x0 < f.centre[0] < x1 and y0 < f.centre[1] < y1
               for f in judge.find_objects(np.asarray(image)))


def far_half(image, shape: str) -> Box:
    """The half of the image (left or right) that does *not* hold the centre of ``image``'s largest
    ``shape`` object: a box the object has to move into."""
    from ..classroom import judge

    h, w = np.asarray(image).shape[:2]
    found = [f for f in judge.find_objects(np.asarray(image)) if f.shape == shape]
    if not found:
        raise ValueError(f"the judge finds no {shape} in this image: pick a seed where it is drawn.")
    return (0, 0, w // 2, h) if found[0].centre[0] > w / 2 else (w // 2, 0, w, h)


def check_count(answer: int | None, images: Sequence, shape: str, prediction: int | None = None) -> bool:
    """Exercise 1: the median number of ``shape`` objects the judge finds in ``images`` (one per seed)."""
    counts = [count(im, shape) for im in images]
    right = int(np.median(counts)) if counts else None
    hint = (f"lesson6.count(image, {shape!r}) counts them in one image; take the median over your images "
            "(int(np.median([...])).")
    if not verdict(answer, right is not None and answer is not None and int(answer) == right,
                   f"the judge counts {counts} {shape}s in your {len(images)} images: the median is {right}.",
                   hint):
        return False
    predicted(prediction, prediction is not None and int(prediction) == right,
              f"a median of {right} {shape}(s) after the edit")
    return True


def check_landed(answer: int | None, images: Sequence, boxes: Sequence[Box], shape: str,
                 prediction: int | None = None) -> bool:
    """Exercise 2: how many of ``images`` have their ``shape`` inside the matching box of ``boxes``.

    The boxes were chosen where the unsteered object is not (``far_half``), so without steering the
    count is 0: steering counts as having moved the objects only when at least half of them land,
    far above what an edit's side effects move by chance.
    """
    landed = [lands_in(im, b, shape) for im, b in zip(images, boxes)]
    right, n = sum(landed), len(landed)
    hint = "count the images for which lesson6.lands_in(image, box, shape) is True (one box per image)."
    moved = "steering moved them" if right >= n / 2 else "steering did not move them"
    if not verdict(answer, answer is not None and n > 0 and int(answer) == right,
                   f"{right} of {n} {shape}s landed in their box "
                   f"({moved}; unsteered: 0 by the choice of boxes).",
                   hint):
        return False
    predicted(prediction, prediction is not None and abs(int(prediction) - right) <= 1,
              f"{right} of {n} landed")
    return True


def check_change(answer: float | None, original, edited, region: np.ndarray,
                 prediction: float | None = None) -> bool:
    """Exercise 3: mean |RGB change| (colours in [0, 1]) between ``original`` and ``edited`` over the pixels
    of ``region`` (bool [H, W]). ``prediction``: the same, guessed before measuring."""
    diff = np.abs(rgb(edited) - rgb(original)).mean(-1)
    region = np.asarray(region, bool)
    right, elsewhere = float(diff[region].mean()), float(diff[~region].mean())
    ok = answer is not None and abs(float(answer) - right) <= 0.05 * right + 2e-3
    if not verdict(answer, ok, f"in the region the image changed by {right:.3f} on average "
                               f"(elsewhere: {elsewhere:.3f}).",
                   "lesson6.rgb gives colours in [0, 1]: a pixel's change is the absolute difference, "
                   "averaged over its 3 channels; average that over the pixels where the region is True."):
        return False
    predicted(prediction, prediction is not None and abs(float(prediction) - right) <= max(0.3 * right, 0.01),
              f"{right:.3f} in the region against {elsewhere:.3f} elsewhere")
    return True


solution = Solutions(
    count="""\
counts = [lesson6.count(im, "triangle") for im in ex1_images]  # the judge's triangles, one count per seed
answer = int(np.median(counts))""",
    landed="""\
answer = sum(lesson6.lands_in(im, box, "square") for im, box in zip(ex2_images, ex2_boxes))""",
    change="""\
diff = np.abs(lesson6.rgb(inpainted) - lesson6.rgb(image)).mean(-1)  # [H, W]: each pixel's change
answer = float(diff[MASK].mean())  # averaged over the repainted half""",
)

__all__ = ["Box", "check_change", "check_count", "check_landed", "count", "far_half", "lands_in", "rgb",
           "solution"]
