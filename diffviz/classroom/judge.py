"""A deterministic checker for classroom images: does the picture show what the prompt asked for?

Pixels are segmented by the nearest palette colour, each connected region of one colour is an
object, its shape is the template (circle, square, triangle) that overlaps it best, and relations are
read from the centroids along the dominant axis, exactly as the data generator draws them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import BACKGROUND, COLOURS, RELATIONS, SHAPES, SIZES, parse_caption, shape_mask, word_objects

MAX_COLOUR_DISTANCE = 70.0  # RGB distance beyond which a pixel belongs to no palette colour
MIN_OBJECT_FRACTION = 0.012  # regions smaller than this share of the image are noise (12 px at 32x32)


@dataclass(frozen=True)
class Found:
    """An object seen in an image. ``centre`` is (x, y) in pixels; ``mask`` bool ``[H, W]``."""

    colour: str
    shape: str
    size: str
    centre: tuple[float, float]
    area: int
    mask: np.ndarray


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected regions of a bool ``[H, W]`` mask, largest first."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    regions = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, region = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            region.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    stack.append((yy, xx))
        out = np.zeros_like(mask)
        ys, xs = zip(*region)
        out[list(ys), list(xs)] = True
        regions.append(out)
    return sorted(regions, key=lambda r: -int(r.sum()))


def segment(image) -> dict[str, np.ndarray]:
    """Bool ``[H, W]`` mask of the pixels nearest to each palette colour (background excluded)."""
    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    names = ["background", *COLOURS]
    palette = np.array([BACKGROUND, *COLOURS.values()], np.float32)
    dist = np.linalg.norm(rgb[:, :, None, :] - palette[None, None], axis=-1)  # [H, W, colour]
    nearest = dist.argmin(-1)
    ok = dist.min(-1) <= MAX_COLOUR_DISTANCE
    return {name: (nearest == i) & ok for i, name in enumerate(names) if name != "background"}


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose template, fitted to the region's own bounding box, overlaps ``mask`` best (IoU).

    Each template takes the box's width and height (a 13x14 square is a 13x14 rectangle, not a circle) and is
    also tried half a pixel larger on each axis, since a small rasterised circle's pixels fill less than its
    drawn box; a shape's score is its best fit.
    """
    ys, xs = np.nonzero(mask)
    x0, y0 = xs.min(), ys.min()
    w, h = xs.max() + 1 - x0, ys.max() + 1 - y0
    ious = {}
    for shape in SHAPES:
        fits = (shape_mask(shape, w + 2 * px, x0 - px, y0 - py, mask.shape[0], height=h + 2 * py)
                for px in (0.0, 0.5) for py in (0.0, 0.5))
        ious[shape] = max((t & mask).sum() / max((t | mask).sum(), 1) for t in fits)
    return max(SHAPES, key=ious.__getitem__)


def find_objects(image) -> list[Found]:
    """Objects in ``image`` (PIL image or ``uint8 [H, W, 3]``), largest first."""
    rgb = np.asarray(image)
    size = rgb.shape[0]
    found = []
    for colour, mask in segment(rgb).items():
        for region in components(mask):
            area = int(region.sum())
            if area < MIN_OBJECT_FRACTION * size * size:
                break
            ys, xs = np.nonzero(region)
            side = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / size
            obj_size = min(SIZES, key=lambda s: abs(SIZES[s] - side))
            centre = (xs.mean() + 0.5, ys.mean() + 0.5)
            found.append(Found(colour, classify_shape(region), obj_size, centre, area, region))
    return sorted(found, key=lambda f: -f.area)


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Centre ``a`` is ``relation`` centre ``b``: right sign on the dominant axis (y grows downwards)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if relation in ("left of", "right of"):
        return abs(dx) > abs(dy) and (dx < 0) == (relation == "left of")
    return abs(dy) > abs(dx) and (dy < 0) == (relation == "above")


def judge(prompt: str, image) -> dict:
    """Check ``image`` against ``prompt`` (a caption of the classroom grammar).

    Returns ``{"correct", "objects_ok", "relation_ok", "size_ok", "count_ok", "found"}``. ``correct``: as many
    objects as asked, each with the asked shape and colour (any colour where the prompt names none) and,
    for two objects, the relation right. Sizes are reported in ``size_ok`` but not part of ``correct``.
    """
    wanted, relation = parse_caption(prompt)
    found = find_objects(image)
    count_ok = len(found) == len(wanted)
    matched: list[Found | None] = []
    free = list(found)
    for w in sorted(wanted, key=lambda w: w["colour"] is None):  # named colours claim their object first
        hit = next((f for f in free if f.shape == w["shape"] and (w["colour"] in (None, f.colour))), None)
        if hit is not None:
            free.remove(hit)
        matched.append(hit)
    order = sorted(range(len(wanted)), key=lambda i: wanted[i]["colour"] is None)
    by_index: list[Found | None] = [None] * len(wanted)
    for pos, i in enumerate(order):
        by_index[i] = matched[pos]
    objects_ok = all(m is not None for m in by_index)
    relation_ok = None
    if relation is not None:
        relation_ok = bool(objects_ok and relation_holds(relation, by_index[0].centre, by_index[1].centre))
    size_ok = objects_ok and all(w["size"] in (None, m.size) for w, m in zip(wanted, by_index))
    correct = count_ok and objects_ok and relation_ok is not False
    return {"correct": bool(correct), "objects_ok": bool(objects_ok), "relation_ok": relation_ok,
            "size_ok": bool(size_ok), "count_ok": bool(count_ok), "found": found, "matched": by_index}


def describe(prompt: str, image: np.ndarray) -> str | None:
    """What the judge sees in ``image`` ([H, W, 3] uint8) beside what ``prompt`` asked, in one line:
    "✗ drawn: a red square left of a blue circle; asked: a red circle left of a blue square", or
    "✓ drawn as asked: ..."; None for a prompt outside the classroom grammar."""
    try:
        parse_caption(prompt)
    except ValueError:
        return None
    verdict = judge(prompt, image)
    drawn = _drawn(verdict["found"])
    if verdict["correct"]:
        return f"✓ drawn as asked: {drawn}"
    return f"✗ drawn: {drawn}; asked: {prompt}"


def _drawn(found: list[Found]) -> str:
    """The judge's objects as a caption: "a red square", "a red square left of a blue circle"."""
    names = [f"a {o.colour} {o.shape}" for o in found]
    if not found:
        return "no shape it recognises"
    if len(found) != 2:
        return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
    (ax, ay), (bx, by) = found[0].centre, found[1].centre
    if abs(ax - bx) >= abs(ay - by):
        first, second = (0, 1) if ax <= bx else (1, 0)
        return f"{names[first]} left of {names[second]}"
    first, second = (0, 1) if ay <= by else (1, 0)
    return f"{names[first]} above {names[second]}"


_RELATION_WORDS = {w for r in RELATIONS for w in r.split()}


class Grader:
    """What ``diffviz.study(DIR, grader=diffviz.classroom.grader)`` learns from the classroom grammar: the
    class of each word and, for a classroom prompt with an image, the judge's verdict and each word's
    object mask (for the IoU of its heat map)."""

    @staticmethod
    def word_class(word: str) -> str | None:
        """The word's class: colour, shape, size, relation or article; None for a word outside the grammar."""
        w = word.lower()
        for name, words in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES),
                            ("relation", _RELATION_WORDS), ("article", ("a", "an", "the"))):
            if w in words:
                return name
        return None

    @staticmethod
    def grade(prompt: str, words: list[str],
              image: np.ndarray) -> tuple[list[np.ndarray | None], dict] | None:
        """(per word: the bool [H, W] mask of its object as the judge found it, or None; the item's columns
        ``correct``, ``objects_ok``, ``relation``, ``relation_ok``) for a prompt of the classroom grammar
        whose words are ``words``; None for any other prompt. ``image``: [H, W, 3] uint8."""
        caption = " ".join(prompt.lower().split())
        try:
            _, relation = parse_caption(caption)
        except ValueError:
            return None
        objects = word_objects(caption)
        if [w for w, _ in objects] != [w.lower() for w in words]:
            return None
        verdict = judge(caption, image)
        masks = [None if obj is None or verdict["matched"][obj] is None else verdict["matched"][obj].mask
                 for _, obj in objects]
        return masks, {"correct": verdict["correct"], "objects_ok": verdict["objects_ok"],
                       "relation": relation, "relation_ok": verdict["relation_ok"]}


grader = Grader()

