"""Procedural captioned shapes: images, ground-truth masks and the caption word -> object mapping.

Everything is a pure function of a seed; nothing large is stored. Images are ``uint8 [H, W, 3]``
at ``IMAGE_SIZE`` pixels, objects are drawn with hard edges so a mask is exactly the object's pixels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _shipped_image_size() -> int:
    """The shipped model's image side in pixels, from its VAE config (64 when no model is shipped)."""
    config = Path(__file__).parent / "weights" / "vae" / "config.json"
    return int(json.loads(config.read_text())["sample_size"]) if config.exists() else 64


IMAGE_SIZE = _shipped_image_size()  # pixels; scenes, masks and the judge follow the shipped model's size
BACKGROUND = (235, 235, 235)
COLOURS = {
    "red": (220, 50, 50),
    "green": (50, 170, 70),
    "blue": (50, 90, 220),
    "yellow": (235, 200, 40),
    "purple": (150, 70, 190),
    "orange": (240, 140, 40),
}
SHAPES = ("circle", "square", "triangle")  # triangles point up
SIZES = {"small": 0.25, "large": 0.4}  # object side as a fraction of the image side
RELATIONS = ("left of", "right of", "above", "below")

# Lesson material on the limits of diffusion models. These colour/shape pairs are never drawn in
# training, in any caption: asking for them tests generalisation.
HELD_OUT_COMBOS = frozenset({("blue", "triangle"), ("orange", "circle"), ("purple", "square")})
# When a caption leaves the colour out ("a circle"), the colour is drawn from this skewed distribution,
# so "a circle" comes out red most of the time: a bias inherited from the data.
COLOURLESS_DISTRIBUTION = {"red": 0.55, "blue": 0.2, "green": 0.1, "yellow": 0.05, "purple": 0.05,
                           "orange": 0.05}
# How often a training caption names the colour / the size of an object.
P_COLOUR_NAMED = 0.85
P_SIZE_NAMED = 0.5
P_TWO_OBJECTS = 0.6


def vocabulary() -> list[str]:
    """Every word the captions use (sorted); each is one token of the classroom tokenizer."""
    words = {"a"} | set(COLOURS) | set(SHAPES) | set(SIZES)
    for relation in RELATIONS:
        words |= set(relation.split())
    return sorted(words)


@dataclass(frozen=True)
class Obj:
    """One object. ``colour``/``size`` are always set; ``*_named`` says whether the caption names them."""

    shape: str
    colour: str
    size: str
    colour_named: bool = True
    size_named: bool = True

    def phrase(self) -> str:
        words = ["a"]
        if self.size_named:
            words.append(self.size)
        if self.colour_named:
            words.append(self.colour)
        words.append(self.shape)
        return " ".join(words)


@dataclass
class Scene:
    """A captioned image with ground truth. ``masks``: bool ``[object, H, W]``; ``centres``: (x, y) pixels."""

    objects: list[Obj]
    relation: str | None
    image: np.ndarray  # [H, W, 3] uint8
    masks: np.ndarray  # [object, H, W] bool
    centres: list[tuple[float, float]] = field(default_factory=list)

    @property
    def caption(self) -> str:
        return caption_of(self.objects, self.relation)

    def word_objects(self) -> list[tuple[str, int | None]]:
        """Each caption word with the index of the object it describes (None for "a" and relation words)."""
        return word_objects(self.caption)

    def word_masks(self) -> list[tuple[str, np.ndarray | None]]:
        """Each caption word with the mask of the object it describes (None where it describes none)."""
        return [(w, None if i is None else self.masks[i]) for w, i in self.word_objects()]


def caption_of(objects: list[Obj], relation: str | None) -> str:
    if len(objects) == 1:
        return objects[0].phrase()
    return f"{objects[0].phrase()} {relation} {objects[1].phrase()}"


_PHRASE = r"a(?: (small|large))?(?: (" + "|".join(COLOURS) + r"))? (" + "|".join(SHAPES) + r")"
_CAPTION = re.compile(rf"^{_PHRASE}(?: ({'|'.join(RELATIONS)}) {_PHRASE})?$")


def parse_caption(caption: str) -> tuple[list[dict], str | None]:
    """``"a red circle left of a large square"`` -> ``([{shape, colour, size}, ...], "left of")``.

    Colour or size is None where the caption leaves it free. Raises ValueError for text outside the grammar.
    """
    m = _CAPTION.match(" ".join(caption.lower().split()))
    if not m:
        raise ValueError(f"{caption!r} is not in the classroom grammar, "
                         "e.g. 'a large red circle left of a blue square'")
    size1, colour1, shape1, relation, size2, colour2, shape2 = m.groups()
    objects = [dict(shape=shape1, colour=colour1, size=size1)]
    if relation:
        objects.append(dict(shape=shape2, colour=colour2, size=size2))
    return objects, relation


def word_objects(caption: str) -> list[tuple[str, int | None]]:
    """Caption words with the index of the object each describes (None for "a" and relation words)."""
    out, obj = [], 0
    words = caption.split()
    for i, w in enumerate(words):
        if w in SHAPES:
            out.append((w, obj))
            obj += 1
        elif w in COLOURS or w in SIZES:
            out.append((w, obj))
        else:
            out.append((w, None))
    return out


def object_side(size: str, image_size: int = IMAGE_SIZE) -> int:
    return round(SIZES[size] * image_size)


def shape_mask(shape: str, side: int, x0: float, y0: float, image_size: int = IMAGE_SIZE,
               height: float | None = None) -> np.ndarray:
    """Bool ``[H, W]`` mask of ``shape`` in the box whose top-left pixel is (x0, y0).

    The box is ``side`` pixels wide and ``height`` (default ``side``) high: a circle in a non-square box is an
    ellipse, a square a rectangle, a triangle keeps its apex at the top middle.
    """
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    u, v = (xx - x0) / side, (yy - y0) / (side if height is None else height)  # box coordinates in [0, 1)
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    if shape == "square":
        return inside
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "triangle":  # apex at top middle, base along the bottom edge
        return inside & (np.abs(u - 0.5) <= 0.5 * v)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(objects: list[Obj], boxes: list[tuple[int, int]], image_size: int = IMAGE_SIZE):
    """Draw ``objects`` with top-left corners ``boxes``: ``(image [H, W, 3] uint8, masks [n, H, W] bool)``."""
    image = np.empty((image_size, image_size, 3), np.uint8)
    image[:] = BACKGROUND
    masks = []
    for obj, (x0, y0) in zip(objects, boxes):
        mask = shape_mask(obj.shape, object_side(obj.size, image_size), x0, y0, image_size)
        image[mask] = COLOURS[obj.colour]
        masks.append(mask)
    return image, np.stack(masks)


def pixels(images: list[np.ndarray]):
    """``uint8 [H, W, 3]`` images as the VAE's input: a float ``torch.Tensor [n, 3, H, W]`` in [-1, 1]."""
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], margin: float) -> bool:
    """True when centre ``a`` is clearly ``relation`` centre ``b`` (dominant axis, with a margin)."""
    dx, dy = a[0] - b[0], a[1] - b[1]  # y grows downwards
    if relation in ("left of", "right of"):
        sign = -1 if relation == "left of" else 1
        return sign * dx >= margin and abs(dy) <= 0.5 * abs(dx)
    sign = -1 if relation == "above" else 1
    return sign * dy >= margin and abs(dx) <= 0.5 * abs(dy)


def _pick_colour(rng: np.random.Generator, shape: str, named: bool) -> str:
    allowed = [c for c in COLOURS if (c, shape) not in HELD_OUT_COMBOS]
    if named:
        return allowed[rng.integers(len(allowed))]
    p = np.array([COLOURLESS_DISTRIBUTION[c] for c in allowed])
    return allowed[rng.choice(len(allowed), p=p / p.sum())]


def random_object(rng: np.random.Generator) -> Obj:
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour_named = bool(rng.random() < P_COLOUR_NAMED)
    return Obj(
        shape=shape,
        colour=_pick_colour(rng, shape, colour_named),
        size=("small", "large")[rng.integers(2)],
        colour_named=colour_named,
        size_named=bool(rng.random() < P_SIZE_NAMED),
    )


def place(objects: list[Obj], relation: str | None, rng: np.random.Generator,
          image_size: int = IMAGE_SIZE, tries: int = 200) -> list[tuple[int, int]] | None:
    """Random non-overlapping top-left corners for ``objects`` that satisfy ``relation``; None if none
    found."""
    sides = [object_side(o.size, image_size) for o in objects]
    for _ in range(tries):
        boxes = [(int(rng.integers(0, image_size - s + 1)), int(rng.integers(0, image_size - s + 1)))
                 for s in sides]
        if len(objects) == 1:
            return boxes
        (xa, ya), (xb, yb) = boxes
        sa, sb = sides
        gap = 1  # at least one background pixel between the boxes on the relation's axis
        ca, cb = (xa + sa / 2, ya + sa / 2), (xb + sb / 2, yb + sb / 2)
        horizontal = relation in ("left of", "right of")
        apart = ((xa + sa + gap <= xb or xb + sb + gap <= xa) if horizontal
                 else (ya + sa + gap <= yb or yb + sb + gap <= ya))
        if apart and _relation_holds(relation, ca, cb, margin=(sa + sb) / 2):
            return boxes
    return None


def make_scene(objects: list[Obj], relation: str | None, rng: np.random.Generator,
               image_size: int = IMAGE_SIZE) -> Scene:
    """Place and draw ``objects`` (a free layout drawn from ``rng``)."""
    boxes = place(objects, relation, rng, image_size)
    if boxes is None:
        raise ValueError(f"could not place {caption_of(objects, relation)!r} in {image_size}px")
    return scene_at(objects, relation, boxes, image_size)


def scene_at(objects: list[Obj], relation: str | None, boxes: list[tuple[int, int]],
             image_size: int = IMAGE_SIZE) -> Scene:
    """The scene with ``objects`` drawn at top-left corners ``boxes``."""
    image, masks = render(objects, boxes, image_size)
    sides = [object_side(o.size, image_size) for o in objects]
    centres = [(x + s / 2, y + s / 2) for (x, y), s in zip(boxes, sides)]
    return Scene(objects, relation, image, masks, centres)


def plain_boxes(objects: list[Obj], relation: str, rng: np.random.Generator,
                image_size: int = IMAGE_SIZE) -> list[tuple[int, int]]:
    """Top-left corners that lay two objects out plainly: their centres at a quarter and three quarters of
    the relation's axis (in the relation's order), both centred on the other axis (+-2 px)."""
    first, second = (image_size / 4, 3 * image_size / 4) if relation in ("left of", "above") else (
        3 * image_size / 4, image_size / 4)
    across = image_size / 2 + int(rng.integers(-2, 3))
    boxes = []
    for obj, along in zip(objects, (first, second)):
        half = object_side(obj.size, image_size) / 2
        x, y = (along, across) if relation in ("left of", "right of") else (across, along)
        boxes.append((round(x - half), round(y - half)))
    return boxes


def random_scene(rng: np.random.Generator, exclude: frozenset[str] = frozenset(),
                 image_size: int = IMAGE_SIZE, plain: float = 0.0) -> Scene:
    """A random training scene whose caption is not in ``exclude`` (e.g. the benchmark's prompts).

    ``plain``: the share of two-object scenes laid out plainly (``plain_boxes``), where the relation alone
    decides where each object goes, so that knowing it pays even at the noisiest steps (0: the data as it is).
    """
    while True:
        two = rng.random() < P_TWO_OBJECTS
        objects = [random_object(rng)] + ([random_object(rng)] if two else [])
        relation = RELATIONS[rng.integers(len(RELATIONS))] if two else None
        if caption_of(objects, relation) in exclude:
            continue
        if two and plain and rng.random() < plain:
            boxes = plain_boxes(objects, relation, rng, image_size)
        else:
            boxes = place(objects, relation, rng, image_size)
        if boxes is None:  # two large objects on the short axis may not fit
            continue
        return scene_at(objects, relation, boxes, image_size)


OPPOSITE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def mirrored(scene: Scene) -> Scene:
    """The two-object ``scene`` mirrored on its relation's axis, its caption naming the opposite relation.

    The objects keep their caption order, shapes and sizes and are re-drawn upright (triangles still point
    up), so the pair differs in one word and in which object stands where: "a red circle left of a blue
    square" and "a red circle right of a blue square".
    """
    if scene.relation is None:
        raise ValueError("a single-object scene has no relation to mirror")
    size = scene.image.shape[0]
    sides = [object_side(o.size, size) for o in scene.objects]
    horizontal = scene.relation in ("left of", "right of")
    boxes = [(round(size - x - s / 2), round(y - s / 2)) if horizontal
             else (round(x - s / 2), round(size - y - s / 2)) for (x, y), s in zip(scene.centres, sides)]
    return scene_at(scene.objects, OPPOSITE_RELATION[scene.relation], boxes, size)


def scenes(seed: int, n: int, exclude: frozenset[str] = frozenset(),
           image_size: int = IMAGE_SIZE, plain: float = 0.0) -> list[Scene]:
    """``n`` scenes (``random_scene``), a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, exclude, image_size, plain) for _ in range(n)]


def held_out_prompts(seed: int = 1234, n_single: int = 12, n_two: int = 60) -> tuple[list[str], list[str]]:
    """Benchmark prompts (every colour named; no held-out combos), never used as training captions.

    Single-object prompts always name the size too ("a small red circle"): the training set still has
    "a red circle" and "a large red circle", so they test composing words, not memory of a caption.
    """
    rng = np.random.default_rng(seed)
    singles: list[str] = []
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_COMBOS]
    for i in rng.permutation(len(pairs) * 2)[:n_single]:
        (colour, shape), size = pairs[i // 2], ("small", "large")[i % 2]
        singles.append(Obj(shape, colour, size).phrase())
    twos: set[str] = set()
    while len(twos) < n_two:
        objs = []
        for _ in range(2):
            colour, shape = pairs[rng.integers(len(pairs))]
            objs.append(Obj(shape, colour, "small", size_named=False))
        if objs[0].colour == objs[1].colour:  # the judge tells objects apart by colour
            continue
        twos.add(caption_of(objs, RELATIONS[rng.integers(len(RELATIONS))]))
    return sorted(singles), sorted(twos)


def benchmark_exclusions() -> frozenset[str]:
    """The captions training never uses: the default ``held_out_prompts()``."""
    singles, twos = held_out_prompts()
    return frozenset(singles) | frozenset(twos)
