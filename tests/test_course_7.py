"""Lesson 7's exercise 1 check (rare colours of colourless objects): True for the right answer computed from
real classroom images, False for wrong ones and for an unanswered None; and the lesson's printed solutions
pass their checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffviz.classroom import data, judge, load_pipeline
from diffviz.course import lesson7

from .conftest import printed_answer


@pytest.fixture(scope="module")
def triangles() -> tuple[list[str], list[str], float]:
    """(the colour found in each of 8 classroom pictures of "a triangle", the rare colours, their share of
    the data's colourless triangles)."""
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in range(8)]
    pics = [np.asarray(im) for im in pipe(["a triangle"] * 8, num_inference_steps=15, generator=gens).images]
    colours = [found[0].colour for found in map(judge.find_objects, pics) if found]
    rare = [c for c in data.COLOURS if data.COLOURLESS_DISTRIBUTION[c] <= 0.05]
    return colours, rare, sum(lesson7.colourless_share("triangle")[c] for c in rare)


def test_check_rare_colours_on_real_triangles(triangles):
    colours, rare, share = triangles
    # guidance drops them
    assert len(colours) >= 6 and sum(c in rare for c in colours) / len(colours) < share / 2
    assert lesson7.check_rare_colours("much less", colours, rare, share)
    assert lesson7.check_rare_colours(" Much Less", colours, rare, share)
    assert not lesson7.check_rare_colours("about as often", colours, rare, share)
    assert not lesson7.check_rare_colours("more", colours, rare, share)
    assert not lesson7.check_rare_colours("less", colours, rare, share)
    assert not lesson7.check_rare_colours(None, colours, rare, share)


def test_check_rare_colours_thresholds():
    rare = ["yellow"]
    assert lesson7.check_rare_colours("about as often", ["yellow", "red", "red", "red"], rare, 0.25)
    assert lesson7.check_rare_colours("more", ["yellow", "yellow", "red", "red"], rare, 0.25)
    assert not lesson7.check_rare_colours("much less", ["yellow", "red", "red", "red"], rare, 0.25)


def test_the_printed_solutions_pass_their_checks(triangles, capsys):
    colours, rare, share = triangles
    assert sorted(lesson7.solution) == ["generalisation_gap", "memory_growth", "rare_colours"]
    my_rare = printed_answer(lesson7.solution, "rare_colours", capsys, "my_rare", drawn={"triangle": colours},
                             RARE=rare, rare_data=share)
    assert my_rare == "much less" and lesson7.check_rare_colours(my_rare, colours, rare, share)
    yellow = ["yellow", "red", "red", "red"]  # a quarter yellow, as in the data (rare_data=0.25)
    my_rare = printed_answer(lesson7.solution, "rare_colours", capsys, "my_rare", drawn={"circle": yellow},
                             RARE=["yellow"], rare_data=0.25)
    assert my_rare == "about as often" and lesson7.check_rare_colours(my_rare, yellow, ["yellow"], 0.25)
    assert lesson7.check_memory_growth(printed_answer(lesson7.solution, "memory_growth", capsys, "my_growth"),
                                       512, 1024)
    seen = [True, True, False, True]  # 75% right
    for held_out, right in [([False, True, False, False], "much less"),  # 25%: a gap of 0.5
                            ([True, True, True, False], "about as often")]:  # no gap
        my_gap = printed_answer(lesson7.solution, "generalisation_gap", capsys, "my_gap", lesson7=lesson7,
                                seen=seen, held_out=held_out)
        assert my_gap == right and lesson7.check_generalisation_gap(my_gap, seen, held_out)
    with pytest.raises(ValueError, match="no solution named"):
        lesson7.solution("bias")
