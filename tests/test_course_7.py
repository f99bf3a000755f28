"""Lesson 7's exercise 1 check (rare colours of colourless objects): True for the right answer computed from
real classroom images, False for wrong ones and for an unanswered None."""

from __future__ import annotations

import numpy as np
import torch

from diffviz.classroom import data, judge, load_pipeline
from diffviz.course import lesson7


def test_check_rare_colours_on_real_triangles():
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(s) for s in range(8)]
    pics = [np.asarray(im) for im in pipe(["a triangle"] * 8, num_inference_steps=15, generator=gens).images]
    colours = [found[0].colour for found in map(judge.find_objects, pics) if found]
    rare = [c for c in data.COLOURS if data.COLOURLESS_DISTRIBUTION[c] <= 0.05]
    share = sum(lesson7.colourless_share("triangle")[c] for c in rare)
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
