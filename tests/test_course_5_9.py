"""Exercise checks of lessons 5-9: True for the right answer computed from a real trace, False for wrong
ones, and False without raising for an unanswered exercise (None)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffviz
from diffviz import edit
from diffviz.attribution import attribute, region_attention
from diffviz.course import lesson5, lesson6, lesson7, lesson8, lesson9

from .conftest import PROMPT, generate

LEFT = (0, 0, 32, 64)  # the left half of the tiny pipeline's 64x64 images


# ---- lesson 5 -------------------------------------------------------------------------------------
def test_lesson5_top_attention(traced, capsys):
    _, tr = traced
    att = region_attention(tr, LEFT)
    right, wrong = tr.words[int(att.argmax())], tr.words[int(att.argmin())]
    assert lesson5.check_top_attention(right, tr, LEFT)
    assert lesson5.check_top_attention(right.upper() + " ", tr, LEFT)  # case and spaces do not matter
    assert not lesson5.check_top_attention(wrong, tr, LEFT)
    assert not lesson5.check_top_attention("dog", tr, LEFT)
    assert not lesson5.check_top_attention(None, tr, LEFT)
    assert "Not answered yet" in capsys.readouterr().out


@pytest.fixture(scope="module")
def attributed(sd_pipe, traced):
    _, tr = traced
    return attribute(sd_pipe, tr, 1, LEFT, n_steps=4)


def test_lesson5_share(attributed):
    a = attributed
    right = float(a.word_scores[a.words.index("circle")]) / a.total
    assert lesson5.check_share(right, a, "circle")
    assert not lesson5.check_share(right + 0.1, a, "circle")
    assert not lesson5.check_share(float(a.word_scores[a.words.index("square")]) / a.total + 0.05, a, "circle")
    assert not lesson5.check_share(None, a, "circle")


def test_lesson5_better_predictor(attributed, traced):
    _, tr = traced
    att = region_attention(tr, LEFT)
    scores = attributed.word_scores
    # an effect that ranks exactly like attention, and one that ranks exactly like attribution
    assert lesson5.check_better_predictor("attention", att, scores, att * 2)
    assert not lesson5.check_better_predictor("attribution", att, scores, att * 2)
    assert lesson5.check_better_predictor("attribution", att, scores, scores + 1)
    assert not lesson5.check_better_predictor("attention", att, scores, scores + 1)
    assert not lesson5.check_better_predictor("both", att, scores, att)
    assert not lesson5.check_better_predictor(None, att, scores, att)


# ---- lesson 6 -------------------------------------------------------------------------------------
def _picture(x0: int, colour=(220, 50, 50)) -> np.ndarray:
    img = np.full((32, 32, 3), 235, np.uint8)
    img[8:20, x0:x0 + 12] = colour
    return img


def test_lesson6_foreground_and_iou():
    fg = lesson6.foreground(_picture(2))
    assert fg.sum() == 144 and fg[8:20, 2:14].all()
    assert lesson6.iou(fg, lesson6.foreground(_picture(2, (50, 90, 220)))) == 1.0
    assert lesson6.iou(fg, lesson6.foreground(_picture(18))) == 0.0


def test_lesson6_steering(sd_pipe, traced):
    _, plain = traced
    box = (32, 0, 64, 32)
    _, steered = edit.steer(sd_pipe, PROMPT, "circle", box, steps=slice(0, 2), num_inference_steps=4)
    free = slice(2, None)
    right = lesson6.box_share(steered, "circle", box, free) / lesson6.box_share(plain, "circle", box, free)
    assert lesson6.check_steering(right, plain, steered, "circle", box, free)
    assert not lesson6.check_steering(right * 1.2, plain, steered, "circle", box, free)
    assert not lesson6.check_steering(None, plain, steered, "circle", box, free)
    # the steered steps themselves carry the edit: there the share rises by construction
    assert lesson6.box_share(steered, "circle", box, slice(0, 2)) > lesson6.box_share(plain, "circle", box, slice(0, 2))


def test_lesson6_layout():
    source, kept, moved = _picture(2), _picture(2, (50, 170, 70)), _picture(18, (50, 170, 70))
    assert lesson6.check_layout(True, source, moved, kept)
    assert not lesson6.check_layout(False, source, moved, kept)
    assert lesson6.check_layout(False, source, kept, moved)
    assert not lesson6.check_layout("yes", source, moved, kept)  # a bool, not a word
    assert not lesson6.check_layout(None, source, moved, kept)


def test_lesson6_outside_change(sd_pipe, traced):
    image, _ = traced
    mask = np.zeros((64, 64), bool)
    mask[:, 32:] = True
    other = generate(sd_pipe, seed=1)
    diff = np.abs(lesson6.rgb(other) - lesson6.rgb(image)).mean(-1)
    assert lesson6.check_outside_change(float(diff[~mask].mean()), image, other, mask)
    assert not lesson6.check_outside_change(float(diff[~mask].mean()) + 0.05, image, other, mask)
    assert not lesson6.check_outside_change(None, image, other, mask)


# ---- lesson 7 -------------------------------------------------------------------------------------
def test_lesson7_latent_cells(sd_pipe):
    assert sd_pipe.vae_scale_factor == 2
    assert lesson7.check_latent_cells(32 * 32, sd_pipe, 64)
    assert not lesson7.check_latent_cells(64 * 64, sd_pipe, 64)
    assert not lesson7.check_latent_cells(None, sd_pipe, 64)


def test_lesson7_gap_and_colour():
    seen, held_out = [True, True, False, True], [False, True, False, False]
    assert lesson7.check_generalisation_gap(0.5, seen, held_out)
    assert not lesson7.check_generalisation_gap(-0.5, seen, held_out)
    assert not lesson7.check_generalisation_gap(0.75, seen, held_out)
    colours = ["red", "blue", "red", "green"]
    assert lesson7.check_most_common_colour("red", colours)
    assert lesson7.check_most_common_colour(" Red", colours)
    assert not lesson7.check_most_common_colour("blue", colours)
    assert lesson7.check_most_common_colour("blue", ["red", "blue"])  # a tie accepts either
    assert lesson7.check_most_common_colour("none", [])
    assert not lesson7.check_most_common_colour(None, colours)


# ---- lesson 8 -------------------------------------------------------------------------------------
KINDS = {"relation": {"left", "right", "of", "above"}, "colour": {"red", "blue", "green"},
         "object": {"circle", "square", "triangle"}}


@pytest.fixture(scope="module")
def head_traces(sd_pipe):
    out = []
    for prompt in (PROMPT, "a green triangle above a red square"):
        with diffviz.trace(sd_pipe, heads=True) as tr:
            generate(sd_pipe, prompt)
        out.append(tr)
    return out


def test_lesson8_profiles_and_checks(head_traces):
    heads, kinds, shares = lesson8.head_profiles(head_traces, KINDS)
    tr = head_traces[0]
    assert len(heads) == sum(l.heads for l in tr.layers) == shares.shape[0]
    assert kinds == list(KINDS) and shares.shape[1] == 3
    assert bool(((shares >= 0) & (shares.sum(1, keepdim=True) <= 1 + 1e-5)).all())
    # one trace by hand: the share of a head's word attention on relation words
    layer = tr.layers[0]
    mass = tr.attn[layer.name].float().sum((-2, -1)).mean(0)  # [head, token]
    rel = [i for i, t in enumerate(tr.tokens) if t.word is not None and tr.words[t.word] in KINDS["relation"]]
    _, _, one_shares = lesson8.head_profiles(head_traces[:1], KINDS)
    assert torch.allclose(one_shares[0, 0], mass[0, rel].sum() / mass[0].sum(), atol=1e-5)

    right = lesson8.top_head(heads, kinds, shares, "colour")
    wrong = heads[int(shares[:, 1].argmin())]
    assert lesson8.check_top_head(right, heads, kinds, shares, "colour")
    assert lesson8.check_top_head(list(right), heads, kinds, shares, "colour")
    assert not lesson8.check_top_head(wrong, heads, kinds, shares, "colour")
    assert not lesson8.check_top_head(None, heads, kinds, shares, "colour")
    assert lesson8.check_total_heads(len(heads), tr)
    assert not lesson8.check_total_heads(len(tr.layers), tr)


def test_lesson8_needs_every_head(traced):
    with pytest.raises(ValueError, match="heads=True"):
        lesson8.head_profiles([traced[1]], KINDS)


def test_lesson8_largest_effect():
    effects = {"relation head": 0.01, "colour head": 0.05, "object head": 0.02}
    assert lesson8.check_largest_effect("colour head", effects)
    assert not lesson8.check_largest_effect("relation head", effects)
    assert not lesson8.check_largest_effect(None, effects)


# ---- lesson 9 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def split_trace(sd_pipe):
    with diffviz.trace(sd_pipe) as tr:
        generate(sd_pipe, "a red teacup left of a blue square")  # "teacup" is not in the tiny vocabulary
    return tr


def test_lesson9_split_words_and_resolutions(split_trace, capsys):
    tr = split_trace
    assert lesson9.split_words(tr) == ["teacup"]
    assert lesson9.check_split_words(["teacup"], tr)
    assert not lesson9.check_split_words([], tr)
    assert not lesson9.check_split_words(["teacup", "square"], tr)
    right = {l.resolution for l in tr.layers}
    assert len(right) == 2
    assert lesson9.check_resolutions(right, tr)
    assert lesson9.check_resolutions(list(right), tr)
    assert not lesson9.check_resolutions(set(list(right)[:1]), tr)
    assert not lesson9.check_split_words(["teacup"], None)  # no checkpoint: skipped, never raises
    assert "skipped: set DIFFVIZ_MODEL" in capsys.readouterr().out


def test_lesson9_heads_megabytes(sd_pipe, split_trace):
    tr = split_trace
    right = diffviz.estimate_bytes(sd_pipe, tr.height, tr.width, tr.num_steps, len(tr.tokens), heads=True)["attention"] / 1e6
    mean = diffviz.estimate_bytes(sd_pipe, tr.height, tr.width, tr.num_steps, len(tr.tokens))["attention"] / 1e6
    assert right > mean
    assert lesson9.check_heads_megabytes(right, sd_pipe, tr)
    assert not lesson9.check_heads_megabytes(mean, sd_pipe, tr)
    assert not lesson9.check_heads_megabytes(None, sd_pipe, tr)
    assert not lesson9.check_heads_megabytes(right, sd_pipe, None)
