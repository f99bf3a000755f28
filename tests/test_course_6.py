"""Lesson 6's checks (notebooks/06_taking_control.ipynb): right answers computed from real classroom
pictures pass, wrong ones fail, and the steering verdict calls a count a success only at half or more."""

from __future__ import annotations

import numpy as np
import pytest

from diffviz.classroom import data
from diffviz.course import lesson6

from .conftest import printed_answer


def _scene(prompt: str, seed: int = 0) -> np.ndarray:
    """A training picture of ``prompt`` drawn by the data generator: its content is known."""
    objects, relation = data.parse_caption(prompt)
    return data.make_scene([data.Obj(o["shape"], o["colour"], o["size"] or "large") for o in objects],
                           relation, np.random.default_rng(seed)).image


def test_count_and_check_count(capsys):
    images = [_scene("a red circle left of a blue circle"), _scene("a red circle left of a blue square"),
              _scene("a green circle above a red circle", 1)]
    assert [lesson6.count(im, "circle") for im in images] == [2, 1, 2]
    assert lesson6.check_count(2, images, "circle", prediction=1)
    assert "prediction 1 was off" in capsys.readouterr().out
    assert not lesson6.check_count(1, images, "circle")
    assert not lesson6.check_count(None, images, "circle")


def test_far_half_and_landed(capsys):
    left = _scene("a red square left of a blue circle")  # the square on the left
    box = lesson6.far_half(left, "square")
    assert box == (16, 0, 32, 32)
    assert not lesson6.lands_in(left, box, "square") and lesson6.lands_in(left, (0, 0, 16, 32), "square")
    right = _scene("a blue circle left of a red square")
    assert (lesson6.lands_in(right, box, "square", "red")
            and not lesson6.lands_in(right, box, "square", "blue"))
    with pytest.raises(ValueError, match="no triangle"):
        lesson6.far_half(left, "triangle")
    # one of two landed: "moved" (half); none of two: "did not move"
    assert lesson6.check_landed(1, [left, right], [box, box], "square", prediction=0)
    assert "steering moved them" in capsys.readouterr().out
    assert lesson6.check_landed(0, [left, left], [box, box], "square")
    assert "did not move" in capsys.readouterr().out
    assert not lesson6.check_landed(2, [left, right], [box, box], "square")
    assert not lesson6.check_landed(None, [left, right], [box, box], "square")


def test_check_change():
    original = _scene("a red circle left of a blue square")
    edited = original.copy()
    edited[:, 16:] = 255 - edited[:, 16:]
    mask = np.zeros((32, 32), bool)
    mask[:, 16:] = True
    diff = np.abs(lesson6.rgb(edited) - lesson6.rgb(original)).mean(-1)
    right = float(diff[mask].mean())
    assert right > 0.1 and diff[~mask].max() == 0
    assert lesson6.check_change(right, original, edited, mask, prediction=right)
    assert not lesson6.check_change(0.0, original, edited, mask)  # the outside's change, not the inside's
    assert not lesson6.check_change(None, original, edited, mask)


def test_the_printed_solutions_pass_their_checks(capsys):
    two, one = "a red triangle left of a blue triangle", "a red circle left of a green triangle"
    triangles = [_scene(two), _scene(one), _scene(two, 1)]  # 2, 1 and 2 triangles
    answer = printed_answer(lesson6.solution, "count", capsys, np=np, lesson6=lesson6, ex1_images=triangles)
    assert answer == 2 and lesson6.check_count(answer, triangles, "triangle")  # the median
    left, right = _scene("a red square left of a blue circle"), _scene("a blue circle left of a red square")
    images, boxes = [left, right], [lesson6.far_half(left, "square")] * 2
    answer = printed_answer(lesson6.solution, "landed", capsys, lesson6=lesson6, ex2_images=images,
                            ex2_boxes=boxes)
    assert answer == 1 and lesson6.check_landed(answer, images, boxes, "square")
    image = _scene("a red circle left of a blue square")
    inpainted, mask = image.copy(), np.zeros((32, 32), bool)
    inpainted[:, 16:] = 255 - inpainted[:, 16:]
    mask[:, 16:] = True
    answer = printed_answer(lesson6.solution, "change", capsys, np=np, lesson6=lesson6, image=image,
                            inpainted=inpainted, MASK=mask)
    assert answer > 0.1 and lesson6.check_change(answer, image, inpainted, mask)
    with pytest.raises(ValueError, match="no solution named"):
        lesson6.solution("median")
