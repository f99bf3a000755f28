"""Exercise checks of lessons 5-9: True for the right answer computed from a real trace, False for wrong
ones, and False without raising for an unanswered exercise (None)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffviz
from diffviz.attribution import attribute, region_attention, spearman
from diffviz.classroom import data
from diffviz.course import lesson5, lesson7, lesson8, lesson9

from .conftest import PROMPT, generate, printed_answer

LEFT = (0, 0, 32, 64)  # the left half of the tiny pipeline's 64x64 images


# ---- lesson 5 -------------------------------------------------------------------------------------
def test_lesson5_top_attention(traced, capsys):
    _, tr = traced
    att = region_attention(tr, LEFT)
    right, wrong = tr.words[int(att.argmax())], tr.words[int(att.argmin())]
    assert lesson5.check_top_attention(right, tr, LEFT, prediction=right)
    assert "was close" in capsys.readouterr().out
    # case and spaces do not matter
    assert lesson5.check_top_attention(right.upper() + " ", tr, LEFT, prediction=wrong)
    assert "was off" in capsys.readouterr().out
    assert not lesson5.check_top_attention(wrong, tr, LEFT)
    assert not lesson5.check_top_attention("dog", tr, LEFT)
    assert not lesson5.check_top_attention(None, tr, LEFT)
    assert "Not answered yet" in capsys.readouterr().out


@pytest.fixture(scope="module")
def attributed(sd_pipe, traced):
    _, tr = traced
    return attribute(sd_pipe, tr, 1, LEFT, n_steps=4)


def test_lesson5_better_predictor(attributed, traced):
    _, tr = traced
    att = region_attention(tr, LEFT)
    scores = attributed.word_scores
    # an effect that ranks exactly like attention, and one that ranks exactly like attribution
    assert lesson5.check_better_predictor("attention", att, scores, att * 2, prediction="attention")
    assert not lesson5.check_better_predictor("attribution", att, scores, att * 2, prediction="attribution")
    assert lesson5.check_better_predictor("attribution", att, scores, scores + 1)
    assert not lesson5.check_better_predictor("attention", att, scores, scores + 1)
    assert not lesson5.check_better_predictor("both", att, scores, att)
    assert not lesson5.check_better_predictor(None, att, scores, att)


def test_lesson5_printed_solutions_pass_their_checks(attributed, traced, capsys):
    _, tr = traced
    a, att = attributed, region_attention(tr, LEFT)
    names = {"tr": tr, "region": LEFT, "a": a, "att": att, "region_attention": region_attention,
             "spearman": spearman}
    assert sorted(lesson5.solution) == ["better_predictor", "shares_sum", "top_attention"]
    assert lesson5.check_top_attention(printed_answer(lesson5.solution, "top_attention", capsys, **names),
                                       tr, LEFT)
    assert lesson5.check_shares_sum(printed_answer(lesson5.solution, "shares_sum", capsys, **names), a)
    for effect in (att * 2, a.word_scores + 1):  # ranked like attention, then like attribution
        answer = printed_answer(lesson5.solution, "better_predictor", capsys, **names, suppressed=effect)
        assert lesson5.check_better_predictor(answer, att, a.word_scores, effect)
    with pytest.raises(ValueError, match="no solution named"):
        lesson5.solution("attention")


# ---- lesson 7 -------------------------------------------------------------------------------------
def _scene(objects, relation, swap_places=False):
    from diffviz.classroom import data

    scene = data.make_scene(objects, relation, np.random.default_rng(0))
    if swap_places:  # draw each object where the other one is: the relation is reversed
        image = np.empty_like(scene.image)
        image[:] = data.BACKGROUND
        for obj, mask, other in zip(objects, scene.masks, scene.masks[::-1]):
            dy, dx = (np.argwhere(other).mean(0) - np.argwhere(mask).mean(0)).round().astype(int)
            image[np.roll(mask, (dy, dx), axis=(0, 1))] = data.COLOURS[obj.colour]
        return image
    return scene.image


def test_lesson7_two_object_outcome():
    from diffviz.classroom.data import Obj

    prompt = "a large red circle left of a large blue square"
    red_circle, blue_square = Obj("circle", "red", "large"), Obj("square", "blue", "large")
    assert lesson7.two_object_outcome(prompt, _scene([red_circle, blue_square], "left of")) == "right"
    assert lesson7.two_object_outcome(prompt,
                                      _scene([red_circle, blue_square], "left of", swap_places=True)) \
        == "relation wrong"
    swapped = [Obj("square", "red", "large"), Obj("circle", "blue", "large")]
    assert lesson7.two_object_outcome(prompt, _scene(swapped, "left of")) == "attributes swapped"
    assert lesson7.two_object_outcome(prompt, _scene([red_circle], None)) == "object missing"


def test_lesson7_quality_curve_and_learnt_at(tmp_path):
    import json

    (tmp_path / "training_log.json").write_text(json.dumps({"batch": 10}))
    rows = [{"step": s, "single": {"correct": a}, "two": {"correct": b, "objects_ok": b, "relation_ok": b}}
            for s, a, b in [(1, 0.1, 0.0), (2, 0.9, 0.1), (3, 1.0, 0.4), (4, 1.0, 0.6)]]
    (tmp_path / "quality_curve.json").write_text(json.dumps(rows))
    curve = lesson7.quality_curve(tmp_path)
    assert [r["samples"] for r in curve] == [10, 20, 30, 40]
    assert lesson7.learnt_at(curve, "single") == 20 and lesson7.learnt_at(curve, "relation") == 30
    from diffviz.classroom.model import WEIGHTS

    shipped = lesson7.quality_curve()  # the shipped model's own curve: its last snapshot is the shipped step
    assert shipped[-1]["step"] == json.loads((WEIGHTS / "training_log.json").read_text())["step"]
    assert all(0 <= r[k] <= 1 for r in shipped for k in ("single", "two", "both_objects", "relation"))
    # another file by name; rows with their own samples need no training log
    other = tmp_path / "other"
    other.mkdir()
    (other / "lineage.json").write_text(json.dumps([{**r, "run": "a", "samples": 7} for r in rows[:1]]))
    assert [(r["run"], r["samples"]) for r in lesson7.quality_curve(other, name="lineage.json")] == [("a", 7)]
    old = lesson7.quality_curve(name="quality_curve_v3_relation_mix.json")  # the model shipped before it
    assert list(dict.fromkeys(r["run"] for r in old)) == ["v3", "v3-text", "v3-batch", "v3-relation",
                                                          "v3-relation-mix"]
    assert [r["samples"] for r in old] == sorted(r["samples"] for r in old)  # counted from v3's start


def test_lesson7_colourless_share():
    from diffviz.classroom.data import COLOURLESS_DISTRIBUTION, HELD_OUT_COMBOS

    circle = lesson7.colourless_share("circle")
    assert ("orange", "circle") in HELD_OUT_COMBOS and circle["orange"] == 0
    assert abs(sum(circle.values()) - 1) < 1e-9
    assert abs(circle["red"]
               - COLOURLESS_DISTRIBUTION["red"] / (1 - COLOURLESS_DISTRIBUTION["orange"])) < 1e-9
    assert abs(circle["red"] - 0.579) < 0.001 and abs(circle["yellow"] - 0.053) < 0.001


def test_lesson7_memory():
    assert lesson7.score_matrix_bytes(4096, 4096, heads=8, batch=2, itemsize=2) == 2 * 8 * 4096 * 4096 * 2
    assert lesson7.largest_allocation(lambda: torch.empty(1000, 1000)) >= 4_000_000
    q = torch.randn(1, 1, 1024, 16)
    fused = lesson7.largest_allocation(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert 0 < fused < lesson7.largest_allocation(lambda: (q @ q.transpose(-1, -2)).softmax(-1) @ q)
    assert lesson7.check_memory_growth(16, 512, 1024)
    assert not lesson7.check_memory_growth(4, 512, 1024)
    assert not lesson7.check_memory_growth(None, 512, 1024)


def test_lesson7_gap():
    seen, held_out = [True, True, False, True], [False, True, False, False]  # a gap of 0.5
    assert lesson7.check_generalisation_gap("much less", seen, held_out)
    assert not lesson7.check_generalisation_gap("about as often", seen, held_out)
    assert lesson7.check_generalisation_gap(" About as often", seen, [True, True, True, False])
    assert not lesson7.check_generalisation_gap("0.5", seen, held_out)
    assert not lesson7.check_generalisation_gap(None, seen, held_out)


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
    right_where = right[0].rsplit(".", 1)[-1]
    assert lesson8.check_top_head(right, heads, kinds, shares, "colour", prediction=right_where)
    n_colour = int((shares.argmax(1) == 1).sum())
    assert lesson8.check_top_kind_count(n_colour, kinds, shares, "colour", prediction=n_colour)
    assert not lesson8.check_top_kind_count(n_colour + 1, kinds, shares, "colour")
    assert not lesson8.check_top_kind_count(None, kinds, shares, "colour")


def test_lesson8_printed_solutions_pass_their_checks(head_traces, capsys):
    heads, kinds, shares = lesson8.head_profiles(head_traces, KINDS)
    names = {"heads": heads, "kinds": kinds, "shares": shares}
    assert sorted(lesson8.solution) == ["largest_effect", "top_head", "top_kind_count"]
    assert lesson8.check_top_kind_count(printed_answer(lesson8.solution, "top_kind_count", capsys, **names),
                                        kinds, shares, "colour")
    assert lesson8.check_top_head(printed_answer(lesson8.solution, "top_head", capsys, **names),
                                  heads, kinds, shares, "colour")
    # one clearly larger, then the other, then neither 1.5 times the other
    for effects, right in [({"coarse": 0.30, "fine": 0.12}, "coarse"), ({"coarse": 0.1, "fine": 0.2}, "fine"),
                           ({"coarse": 0.303, "fine": 0.297}, "same")]:
        answer = printed_answer(lesson8.solution, "largest_effect", capsys, effects=effects)
        assert answer == right and lesson8.check_largest_effect(answer, effects, clear=1.5)
    with pytest.raises(ValueError, match="no solution named"):
        lesson8.solution("colour")


def test_lesson8_needs_every_head(traced):
    with pytest.raises(ValueError, match="heads=True"):
        lesson8.head_profiles([traced[1]], KINDS)


def test_lesson8_largest_effect(capsys):
    effects = {"relation head": 0.01, "colour head": 0.05, "object head": 0.02}
    assert lesson8.check_largest_effect("colour head", effects)
    assert not lesson8.check_largest_effect("relation head", effects)
    assert not lesson8.check_largest_effect(None, effects)
    capsys.readouterr()
    assert lesson8.check_largest_effect("colour head", effects, prediction="object head")
    out = capsys.readouterr().out
    assert "prediction 'object head' was off" in out and "(2.5x the next)" in out
    assert lesson8.check_largest_effect("colour head", effects, prediction="colour head")
    assert "was close" in capsys.readouterr().out


def test_lesson8_drawn_right():
    scene = data.make_scene([data.Obj("circle", "red", "large"), data.Obj("square", "blue", "large")],
                            "left of", np.random.default_rng(0)).image
    assert lesson8.drawn_right("a red circle left of a blue square", scene)
    assert not lesson8.drawn_right("a red circle right of a blue square", scene)


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
    assert lesson9.check_split_words([" Teacup"], tr, prediction=["teacup"])
    assert "was close" in capsys.readouterr().out
    assert not lesson9.check_split_words([], tr)
    assert not lesson9.check_split_words(["teacup", "square"], tr)
    assert not lesson9.check_split_words("teacup", tr)  # a list of words, not one string
    assert not lesson9.check_split_words(None, tr)
    assert "Not answered yet" in capsys.readouterr().out
    right = {}
    for l in tr.layers:
        right[l.resolution] = right.get(l.resolution, 0) + 1
    assert len(right) == 2 and lesson9.layers_per_resolution(tr) == right
    assert lesson9.resolutions(tr) == set(right)
    assert lesson9.check_resolutions(right, tr)
    assert lesson9.check_resolutions({k.replace("x", " x "): v for k, v in right.items()}, tr)
    finest, coarsest = sorted(right, key=lambda r: -int(r.split("x")[0]))
    where = ("equally" if right[finest] == right[coarsest]
             else "finest" if right[finest] > right[coarsest] else "coarsest")
    assert lesson9.finest_or_coarsest(tr) == where
    capsys.readouterr()
    assert lesson9.check_resolutions(right, tr, prediction=where.capitalize())
    assert "was close" in capsys.readouterr().out
    other = "finest" if where != "finest" else "coarsest"
    assert lesson9.check_resolutions(right, tr, prediction=other)
    assert "was off" in capsys.readouterr().out
    assert not lesson9.check_resolutions(set(right), tr)  # the resolutions alone are not the counts
    assert not lesson9.check_resolutions({k: v + 1 for k, v in right.items()}, tr)
    assert not lesson9.check_resolutions(dict(list(right.items())[:1]), tr)
    assert not lesson9.check_resolutions(None, tr)


def test_lesson9_printed_solutions_pass_their_checks(sd_pipe, split_trace, capsys):
    tr = split_trace  # it stands for both the notebook's tr and its tr_words
    names = dict(diffviz=diffviz, pipe=sd_pipe, tr=tr, tr_words=tr)
    checks = {"split_words": lambda a: lesson9.check_split_words(a, tr),
              "resolutions": lambda a: lesson9.check_resolutions(a, tr),
              "heads_megabytes": lambda a: lesson9.check_heads_megabytes(a, sd_pipe, tr)}
    assert sorted(lesson9.solution) == sorted(checks)  # one worked answer per exercise
    for name, check in checks.items():
        assert check(printed_answer(lesson9.solution, name, capsys, **names)), name
    with pytest.raises(ValueError, match="no solution named"):
        lesson9.solution("words")


def test_lesson9_heads_megabytes(sd_pipe, split_trace, capsys):
    tr = split_trace
    args = (tr.num_steps, len(tr.tokens))
    right = diffviz.estimate_bytes(sd_pipe, 2 * tr.height, 2 * tr.width, *args, heads=True)["attention"] / 1e6
    same_size = diffviz.estimate_bytes(sd_pipe, tr.height, tr.width, *args, heads=True)["attention"] / 1e6
    mean = diffviz.estimate_bytes(sd_pipe, 2 * tr.height, 2 * tr.width, *args)["attention"] / 1e6
    assert right > same_size and right > mean
    assert abs(lesson9.attention_megabytes(sd_pipe, tr, heads=True, scale=2) - right) < 1e-9
    assert lesson9.check_heads_megabytes(right, sd_pipe, tr)
    capsys.readouterr()
    assert lesson9.check_heads_megabytes(right, sd_pipe, tr, prediction=right / same_size)
    assert "was close" in capsys.readouterr().out
    assert lesson9.check_heads_megabytes(right, sd_pipe, tr, prediction=2)
    assert "was off" in capsys.readouterr().out
    assert not lesson9.check_heads_megabytes(same_size, sd_pipe, tr)  # the trace's own size
    assert not lesson9.check_heads_megabytes(mean, sd_pipe, tr)  # the head mean
    assert not lesson9.check_heads_megabytes("many", sd_pipe, tr)
    assert not lesson9.check_heads_megabytes(None, sd_pipe, tr)
