"""The classroom data generator: masks, captions, determinism, the documented biases, the judge."""

import numpy as np
import pytest

from diffviz.classroom import data
from diffviz.classroom.judge import judge
from diffviz.classroom.model import tokenizer
from diffviz.classroom.tokenizer import unknown_words

SCENES = data.scenes(0, 300)


def test_masks_are_exactly_the_drawn_pixels():
    for s in SCENES:
        drawn = (s.image != np.array(data.BACKGROUND, np.uint8)).any(-1)
        assert (s.masks.any(0) == drawn).all()
        assert s.masks.sum(0).max() <= 1  # objects never overlap
        for obj, mask in zip(s.objects, s.masks):
            assert mask.any()
            assert (s.image[mask] == data.COLOURS[obj.colour]).all()


def test_captions_parse_back_to_objects():
    for s in SCENES:
        objects, relation = data.parse_caption(s.caption)
        assert relation == s.relation
        assert len(objects) == len(s.objects)
        for parsed, obj in zip(objects, s.objects):
            assert parsed["shape"] == obj.shape
            assert parsed["colour"] == (obj.colour if obj.colour_named else None)
            assert parsed["size"] == (obj.size if obj.size_named else None)
    with pytest.raises(ValueError, match="grammar"):
        data.parse_caption("a red zebra")


def test_word_masks_point_at_the_described_object():
    for s in SCENES:
        words = s.caption.split()
        pairs = s.word_masks()
        assert [w for w, _ in pairs] == words
        for word, mask in pairs:
            if word in data.COLOURS:
                assert (s.image[mask] == data.COLOURS[word]).all()
            elif word in data.SHAPES or word in data.SIZES:
                assert mask is not None
            else:
                assert mask is None


def test_relations_and_sizes_hold():
    for s in SCENES:
        for obj, mask in zip(s.objects, s.masks):
            ys, xs = np.nonzero(mask)
            assert max(np.ptp(xs), np.ptp(ys)) + 1 == data.object_side(obj.size)
        if s.relation:
            (ax, ay), (bx, by) = s.centres
            dx, dy = ax - bx, ay - by
            expect = {"left of": dx < 0 and abs(dx) > abs(dy), "right of": dx > 0 and abs(dx) > abs(dy),
                      "above": dy < 0 and abs(dy) > abs(dx), "below": dy > 0 and abs(dy) > abs(dx)}
            assert expect[s.relation], s.caption


def test_a_mirrored_scene_swaps_sides_and_names_the_opposite_relation():
    for s in SCENES:
        if s.relation is None:
            with pytest.raises(ValueError, match="single-object"):
                data.mirrored(s)
            continue
        m = data.mirrored(s)
        assert m.objects == s.objects and m.relation == data.OPPOSITE_RELATION[s.relation] != s.relation
        if len({o.colour for o in s.objects}) == 2:  # the judge tells objects apart by colour
            assert judge(m.caption, m.image)["correct"] and not judge(m.caption, s.image)["correct"]
        axis = 0 if s.relation in ("left of", "right of") else 1
        for a, b in zip(s.centres, m.centres):  # mirrored on the relation's axis, the other axis kept
            assert a[axis] + b[axis] == data.IMAGE_SIZE and a[1 - axis] == b[1 - axis]
        assert (m.masks.sum((1, 2)) == s.masks.sum((1, 2))).all() and m.masks.sum(0).max() <= 1


def test_deterministic_by_seed():
    a, b, c = data.scenes(3, 20), data.scenes(3, 20), data.scenes(4, 20)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all((x.image == y.image).all() for x, y in zip(a, b))
    assert [s.caption for s in a] != [s.caption for s in c]
    assert data.held_out_prompts() == data.held_out_prompts()


def test_held_out_combos_and_colourless_bias():
    scenes = data.scenes(1, 2000)
    objs = [o for s in scenes for o in s.objects]
    assert not {(o.colour, o.shape) for o in objs} & data.HELD_OUT_COMBOS
    colourless = [o.colour for o in objs if not o.colour_named]
    named = [o.colour for o in objs if o.colour_named]
    assert colourless.count("red") / len(colourless) > 0.4  # skewed: red dominates "a circle"
    assert named.count("red") / len(named) < 0.3  # named colours are near uniform


def test_benchmark_prompts_are_not_training_captions():
    excluded = data.benchmark_exclusions()
    singles, twos = data.held_out_prompts()
    assert len(singles) == 12 and len(twos) == 60 and len(excluded) == 72
    assert not {s.caption for s in data.scenes(2, 3000, excluded)} & excluded
    for p in singles + twos:
        objects, _ = data.parse_caption(p)
        assert all((o["colour"], o["shape"]) not in data.HELD_OUT_COMBOS for o in objects)


def test_judge_accepts_ground_truth_and_rejects_a_wrong_relation():
    for s in SCENES[:150]:
        if len({o.colour for o in s.objects}) < len(s.objects):
            continue  # same-colour pairs may touch; the benchmark never asks for them
        assert judge(s.caption, s.image)["correct"], s.caption
        if s.relation:
            wrong = s.caption.replace(s.relation, data.OPPOSITE_RELATION[s.relation])
            assert not judge(wrong, s.image)["correct"], wrong
    blank = np.full((32, 32, 3), 235, np.uint8)
    assert not judge("a red circle", blank)["correct"]


def test_tokenizer_one_token_per_word_and_unknown_words():
    tok = tokenizer()
    for word in data.vocabulary():
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    assert unknown_words(tok, "a red zebra left of a Blue square") == ["zebra"]
    assert len(tok("zebra", add_special_tokens=False).input_ids) > 1  # split into characters, not dropped


def near_ideal_shapes(image_size: int):
    """Every shape drawn in boxes whose width and height are the object sizes +-1 px and differ by up to 2 px,
    at quarter-pixel offsets: ``[(shape, w, h, mask)]``."""
    out = []
    for size in data.SIZES:
        side = data.object_side(size, image_size)
        for w in (side - 1, side, side + 1):
            for h in range(w - 2, w + 3):
                for offset in (3.0, 3.25, 3.5, 3.75):
                    for shape in data.SHAPES:
                        mask = data.shape_mask(shape, w, offset, offset + 0.5, image_size, height=h)
                        out.append((shape, w, h, mask))
    return out


@pytest.mark.parametrize("image_size", [32, 64])
def test_judge_names_near_ideal_shapes_at_every_size(image_size):
    from diffviz.classroom.judge import classify_shape

    cases = near_ideal_shapes(image_size)
    wrong = [(shape, w, h, classify_shape(m)) for shape, w, h, m in cases if classify_shape(m) != shape]
    assert len(cases) == 2 * 3 * 5 * 4 * 3 and not wrong, wrong[:5]
    assert {shape for shape, *_ in cases} == set(data.SHAPES)


def test_judge_reads_an_oblong_square_scene_as_a_square():
    image = np.full((32, 32, 3), 235, np.uint8)
    image[4:18, 5:18] = data.COLOURS["red"]  # a 13x14 red box: a square drawn one pixel too tall
    assert judge("a red square", image)["correct"]
    assert not judge("a red circle", image)["correct"]


def test_probe_edits_change_one_thing_each():
    """The probe's scenes draw the held-out two-object prompts as captioned; an edit changes only the relation
    (to its opposite) or only which object has which colour."""
    from diffviz.classroom.probe import edit_caption, held_out_scenes

    scenes = held_out_scenes(layouts=1)
    assert [s.caption for s in scenes] == data.held_out_prompts()[1]
    for scene in scenes:
        assert judge(scene.caption, scene.image)["correct"]
        objs, rel = data.parse_caption(scene.caption)
        same, opposite = data.parse_caption(edit_caption(scene, "order"))
        assert same == objs and opposite == data.OPPOSITE_RELATION[rel]
        recoloured, rel2 = data.parse_caption(edit_caption(scene, "binding"))
        assert rel2 == rel and [o["shape"] for o in recoloured] == [o["shape"] for o in objs]
        assert [o["colour"] for o in recoloured] == [o["colour"] for o in reversed(objs)]


def test_plain_layouts_put_the_objects_where_the_relation_says():
    """plain=1: each two-object scene's centres stand at a quarter and three quarters of the relation's axis,
    in the relation's order, and centred (+-2 px, rounding) on the other axis."""
    size = data.IMAGE_SIZE
    plain = [s for s in data.scenes(6, 200, plain=1.0) if s.relation]
    assert len(plain) > 60
    for s in plain:
        (ax, ay), (bx, by) = s.centres
        horizontal = s.relation in ("left of", "right of")
        along, across = ((ax, bx), (ay, by)) if horizontal else ((ay, by), (ax, bx))
        first = size / 4 if s.relation in ("left of", "above") else 3 * size / 4
        assert abs(along[0] - first) <= 0.5 and abs(along[1] - (size - first)) <= 0.5
        assert all(abs(c - size / 2) <= 2.5 for c in across)
        assert s.masks.sum(0).max() == 1 and all(m.any() for m in s.masks)  # apart, and inside the image
