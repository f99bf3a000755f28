"""Lesson 3's new checks (course v2): the guided prediction with a predicted ratio, the early x0
overshoot, and the negative prompt that changes the pictures most."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffviz.course import lesson3

from .conftest import printed_answer, training_picture


@pytest.fixture(scope="module")
def trace(traced6):
    return traced6


def test_check_guided_compares_the_predicted_ratio(trace, capsys):
    s, g = 2, trace.guidance_scale
    right = trace.noise_uncond[s] + g * (trace.noise_cond[s] - trace.noise_uncond[s])
    assert lesson3.check_guided(right, trace, s, prediction=g)
    assert "was close" in capsys.readouterr().out
    assert lesson3.check_guided(right, trace, s, prediction=1.0)
    assert "was off" in capsys.readouterr().out
    assert not lesson3.check_guided(trace.noise_cond[s], trace, s, prediction=g)
    assert "Measured" not in capsys.readouterr().out


def test_check_overshoot(trace, capsys):
    s, real = 1, 0.8
    right = float(trace.x0[s].float().std()) / real
    assert lesson3.overshoot(trace, s, real) == pytest.approx(right)
    assert lesson3.check_overshoot(right, trace, s, real, prediction=right * 1.1)
    assert "was close" in capsys.readouterr().out
    # not divided by real
    assert not lesson3.check_overshoot(float(trace.x0[s].float().std()), trace, s, real)
    # noisy latent
    assert not lesson3.check_overshoot(float(trace.latents[s].float().std()) / real, trace, s, real)
    assert not lesson3.check_overshoot(None, trace, s, real)


def test_redness_and_red_count():
    red, blue = training_picture("a large red circle"), training_picture("a large blue circle")
    assert lesson3.redness(red) > 0.05 and lesson3.redness(blue) == 0
    assert lesson3.red_count([red, blue, training_picture("a large red circle", 1)]) == 2


def test_change_and_check_furthest(capsys):
    red, blue, green = (training_picture(f"a large {c} circle") for c in ("red", "blue", "green"))
    assert lesson3.change([red, red], [red, red]) == 0
    assert lesson3.change([blue], [red]) > 0.01  # the same circle, another colour
    assert lesson3.change([blue, red], [red, red]) == pytest.approx(lesson3.change([blue], [red]) / 2)
    with pytest.raises(ValueError, match="one of each per seed"):
        lesson3.change([red], [red, red])
    negatives = {None: [red, red], "red": [red, blue], "a red circle": [blue, green],
                 "a large red circle": [red, training_picture("a large red circle", 1)]}
    assert lesson3.check_furthest("a red circle", negatives, prediction="red")
    assert "was off" in capsys.readouterr().out
    assert not lesson3.check_furthest("red", negatives)
    assert not lesson3.check_furthest("a large red circle", negatives)
    assert not lesson3.check_furthest(None, negatives)
    assert "Not answered yet" in capsys.readouterr().out


def test_clipped_fraction():
    grey = np.full((8, 8, 3), 128, np.uint8)
    some = grey.copy()
    some[:6] = 0
    assert lesson3.clipped_fraction(grey) == 0
    assert lesson3.clipped_fraction(some) == pytest.approx(6 / 8)


def test_the_printed_solutions_pass_their_checks(trace, capsys):
    red, blue, green = (training_picture(f"a large {c} circle") for c in ("red", "blue", "green"))
    real_z = 0.8 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    negatives = {None: [red, red], "red": [red, blue], "a red circle": [blue, green],
                 "a large red circle": [red, blue]}
    given = {"trace": trace, "lesson3": lesson3, "sweep": {20: trace}, "EARLY": 1, "real_z": real_z,
             "negatives": negatives, "NEGATIVES": ["red", "a red circle", "a large red circle"]}
    checks = {"guided": lambda answer: lesson3.check_guided(answer, trace, step=5),
              "overshoot": lambda answer: lesson3.check_overshoot(answer, trace, 1, float(real_z.std())),
              "furthest": lambda answer: lesson3.check_furthest(answer, negatives)}
    assert sorted(lesson3.solution) == sorted(checks)  # one worked answer per exercise
    for name, check in checks.items():  # each run on the notebook's names at its exercise
        assert check(printed_answer(lesson3.solution, name, capsys, **given)), name
        assert "✓ Right" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no solution named"):
        lesson3.solution("guidance")
