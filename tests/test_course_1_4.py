"""Exercise checks of lessons 1-4: True for a right answer computed from a real trace, False for wrong
ones, and a hint (no exception) for an unanswered exercise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffviz
from diffviz.classroom import IMAGE_SIZE
from diffviz.course import lesson1, lesson2, lesson3, lesson4

from .conftest import generate


@pytest.fixture(scope="module")
def trace(sd_pipe):
    """All 77 token positions kept, 6 DDIM steps, guidance 7.5."""
    with diffviz.trace(sd_pipe, tokens="all") as tr:
        generate(sd_pipe, steps=6)
    return tr


def test_unanswered_prints_a_hint_and_is_false(trace, capsys):
    images = [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)]
    checks = [
        lambda: lesson1.check_x0(None, trace, 2), lambda: lesson1.check_signal_step(None, trace),
        lambda: lesson1.check_ddim_step(None, trace, 2),
        lambda: lesson2.check_top_word(None, trace),
        lambda: lesson2.check_peak_step(None, trace, "red"),
        lambda: lesson3.check_guided(None, trace, 2),
        lambda: lesson4.check_seed_vs_word(None, *images, images[0]),
        lambda: lesson4.check_red_share(None, images, "circle"),
    ]
    for check in checks:
        assert check() is False
        assert "Not answered yet. Hint:" in capsys.readouterr().out


# ---- lesson 1 ------------------------------------------------------------------------------------------
def test_check_x0(trace, capsys):
    s = 1  # early: x0 still moves from step to step
    ab = float(trace.alpha_bar[s])
    right = (trace.latents[s] - math.sqrt(1 - ab) * trace.noise_guided[s]) / math.sqrt(ab)
    assert lesson1.check_x0(right, trace, s)
    assert "✓" in capsys.readouterr().out
    assert not lesson1.check_x0(trace.x0[s + 1], trace, s)  # another step
    assert not lesson1.check_x0(trace.latents[s], trace, s)  # the noisy latent itself
    # no sqrt(1 - ab)
    assert not lesson1.check_x0((trace.latents[s] - trace.noise_guided[s]) / math.sqrt(ab), trace, s)
    assert not lesson1.check_x0(right[None], trace, s)  # wrong shape
    assert lesson1.check_x0(trace.x0[s], trace, s)  # the scheduler's own x0 (DDIM) is the same
    assert lesson1.check_x0(right.half(), trace, s)  # float16 rounding is not an error
    assert "shape" in capsys.readouterr().out


def test_check_signal_step(trace):
    right = next(i for i, ab in enumerate(trace.alpha_bar.tolist()) if ab >= 0.5)
    assert lesson1.check_signal_step(right, trace)
    assert not lesson1.check_signal_step(right - 1, trace)
    assert not lesson1.check_signal_step(right + 1, trace)


# ---- lesson 2 ------------------------------------------------------------------------------------------
def _word_totals(trace) -> list[float]:
    """Total attention per word (mean over layers, heads, cells; summed over steps and subword tokens)."""
    totals = []
    for w in range(len(trace.words)):
        idx = [i for i, t in enumerate(trace.tokens) if t.word == w]
        per_layer = [trace.attn[l.name][:, :, idx].float().sum(2).mean(dim=(1, 2, 3)).sum()
                     for l in trace.layers]
        totals.append(float(torch.stack(per_layer).mean()))
    return totals


def test_check_top_word(trace):
    totals = _word_totals(trace)
    right = trace.words[int(np.argmax(totals))]
    assert lesson2.check_top_word(right, trace)
    assert lesson2.check_top_word(right.upper() + " ", trace)
    wrong = next(w for w in trace.words if w != right)
    assert not lesson2.check_top_word(wrong, trace)


def test_check_peak_step(trace):
    idx = [i for i, t in enumerate(trace.tokens) if t.word is not None and trace.words[t.word] == "red"]
    per_step = sum(torch.stack([trace.attn[l.name][:, :, [i]].float().sum(2).mean(dim=(1, 2, 3))
                                for l in trace.layers]).mean(0) for i in idx)
    right = int(per_step.argmax())
    assert lesson2.check_peak_step(right, trace, "red")
    assert not lesson2.check_peak_step((right + 1) % trace.num_steps, trace, "red")


# ---- lesson 3 ------------------------------------------------------------------------------------------
def test_check_guided(trace):
    s, g = 2, trace.guidance_scale
    right = trace.noise_uncond[s] + g * (trace.noise_cond[s] - trace.noise_uncond[s])
    assert lesson3.check_guided(right, trace, s)
    assert not lesson3.check_guided(trace.noise_cond[s], trace, s)
    assert not lesson3.check_guided(trace.noise_cond[s] + g * (trace.noise_cond[s] - trace.noise_uncond[s]),
                                    trace, s)
    assert not lesson3.check_guided(right.flatten(), trace, s)


def test_saturation_measures():
    assert lesson3.saturation(np.full((4, 4, 3), 128, np.uint8)) == 0
    assert lesson3.saturation(np.tile(np.array([255, 0, 0], np.uint8), (4, 4, 1))) == pytest.approx(1)


# ---- lesson 4 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seed_images(sd_pipe):
    """Tiny-pipeline pictures: seeds 0..3 of one prompt, and seed 0 with one word changed."""
    same = [np.asarray(generate(sd_pipe, steps=2, seed=s)) for s in range(4)]
    edited = np.asarray(generate(sd_pipe, "a blue circle left of a blue square", steps=2, seed=0))
    return same, edited


def test_diversity(seed_images):
    same, _ = seed_images
    x = [im.astype(np.float64) / 255 for im in same]
    right = np.mean([np.sqrt(((x[i] - x[j]) ** 2).mean()) for i in range(4) for j in range(i + 1, 4)])
    assert lesson4.diversity(same) == pytest.approx(right, rel=1e-5)
    assert lesson4.diversity([same[0]] * 3) == 0
    with pytest.raises(ValueError, match="at least 2"):
        lesson4.diversity(same[:1])


def test_check_seed_vs_word(seed_images, capsys):
    same, edited = seed_images
    rms = lambda a, b: np.sqrt(((a.astype(np.float64) - b) ** 2).mean())
    right = rms(same[0], same[1]) / rms(same[0], edited)
    more = "seed" if right > 1 else "word"
    assert lesson4.check_seed_vs_word(right, same[0], edited, same[1], prediction=more)
    assert f"Your prediction '{more}' was close" in capsys.readouterr().out
    assert lesson4.check_seed_vs_word(right, same[0], edited, same[1],
                                      prediction={"seed": "word"}.get(more, "seed"))
    assert "was off" in capsys.readouterr().out
    assert not lesson4.check_seed_vs_word(1 / right, same[0], edited, same[1])


def test_training_pictures_follow_the_caption():
    from diffviz.classroom import judge

    pics = lesson4.training_pictures("a large red circle left of a green triangle", 3, seed=1)
    assert len(pics) == 3 and pics[0].shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and pics[0].dtype == np.uint8
    assert all(judge.judge("a large red circle left of a green triangle", p)["correct"] for p in pics)
    again = lesson4.training_pictures("a large red circle left of a green triangle", 3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(pics, again))
    colours = {judge.find_objects(p)[0].colour for p in lesson4.training_pictures("a circle", 40)}
    assert "red" in colours and len(colours) > 1  # an open colour is drawn, mostly red
