"""Lesson 4's colour measures and the red-share check, on pictures whose colours are known: training
pictures drawn by the classroom data generator."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffviz.course import lesson4

from .conftest import PROMPT, printed_answer, training_picture


def test_colour_shares_count_the_judged_colours():
    pics = lesson4.training_pictures("a red circle", 3) + lesson4.training_pictures("a blue square", 1)
    shares = lesson4.colour_shares(pics + [np.zeros_like(pics[0])])  # a black picture: no object
    assert shares["red"] == pytest.approx(0.6) and shares["blue"] == pytest.approx(0.2)
    assert shares["none"] == pytest.approx(0.2) and sum(shares.values()) == pytest.approx(1)
    with pytest.raises(ValueError, match="at least one"):
        lesson4.colour_shares([])


def test_effective_colours():
    assert lesson4.effective_colours({"red": 1.0, "blue": 0.0, "none": 0.0}) == pytest.approx(1)
    assert lesson4.effective_colours({"red": 0.25, "blue": 0.25, "green": 0.5, "none": 0.5}) == pytest.approx(
        2 ** 1.5)
    assert lesson4.effective_colours({"red": 0.5, "blue": 0.5}) == pytest.approx(2)


def test_check_red_share(capsys):
    pics = lesson4.training_pictures("a red square", 3) + lesson4.training_pictures("a green square", 1)
    assert lesson4.check_red_share(0.75, pics, "square", prediction=0.9)  # data: red 58% of squares
    assert "Your prediction 0.9 was close" in capsys.readouterr().out
    assert lesson4.check_red_share(0.75, pics, "square", prediction=0.3)
    assert "was off" in capsys.readouterr().out
    assert not lesson4.check_red_share(75, pics, "square")  # a percentage, not a share
    assert not lesson4.check_red_share(0.25, pics, "square")
    assert not lesson4.check_red_share(None, pics, "square")


def test_the_printed_solutions_pass_their_checks(capsys):
    a = SimpleNamespace(image=torch.from_numpy(training_picture(PROMPT)))  # a trace's image is a tensor
    b = SimpleNamespace(image=torch.from_numpy(training_picture("a yellow circle left of a blue square")))
    same_prompt = [a.image.numpy(), training_picture(PROMPT, 1)]  # seeds 0 and 1 of PROMPT
    squares = lesson4.training_pictures("a red square", 3) + lesson4.training_pictures("a green square", 5)
    given = {"lesson4": lesson4, "a": a, "b": b, "same_prompt": same_prompt, "SEED": 0, "squares": squares}
    checks = {"seed_vs_word": lambda answer: lesson4.check_seed_vs_word(answer, a.image, b.image,
                                                                        same_prompt[1]),
              "red_share": lambda answer: lesson4.check_red_share(answer, squares, "square")}
    assert sorted(lesson4.solution) == sorted(checks)  # one worked answer per exercise
    for name, check in checks.items():  # each run on the notebook's names at its exercise
        assert check(printed_answer(lesson4.solution, name, capsys, **given)), name
        assert "✓ Right" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no solution named"):
        lesson4.solution("seed")
