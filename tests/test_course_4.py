"""Lesson 4's colour measures and the red-share check, on pictures whose colours are known: training
pictures drawn by the classroom data generator."""

from __future__ import annotations

import numpy as np
import pytest

from diffviz.course import lesson4


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
