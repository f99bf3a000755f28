"""The lesson rules as functions: a demo image is judged before use, a stated finding is asserted, and
plotly figures carry a PNG for static viewers."""

from __future__ import annotations

import base64
import shutil

import numpy as np
import pytest

from diffviz import course

from .conftest import training_picture


def test_judged_passes_a_right_picture_and_names_what_a_wrong_one_shows(capsys):
    image = training_picture("a red circle left of a blue square")
    assert course.judged("a red circle left of a blue square", image)["correct"]
    assert "drawn right" in capsys.readouterr().out
    wrong = "a blue circle left of a red square"
    with pytest.raises(course.LessonClaimError, match=rf"asked '{wrong}'.*red circle"):
        course.judged(wrong, image)
    with pytest.raises(AssertionError, match="relation right: False"):
        course.judged("a red circle right of a blue square", image)


def test_judged_on_another_model_says_it_cannot_judge(monkeypatch, capsys):
    monkeypatch.setattr(course, "ON_CLASSROOM_MODEL", False)
    assert course.judged("a red circle", np.zeros((32, 32, 3), np.uint8)) is None
    assert "no judge" in capsys.readouterr().out


def test_saw_asserts_a_finding_on_the_classroom_model_and_reports_it_elsewhere(monkeypatch, capsys):
    two, one = 2, 1
    course.saw("two is more than one", two > one)
    assert capsys.readouterr().out == "What we saw: two is more than one\n"
    with pytest.raises(course.LessonClaimError, match="one is more than two"):
        course.saw("one is more than two", one > two)
    monkeypatch.setattr(course, "ON_CLASSROOM_MODEL", False)
    course.saw("one is more than two", one > two)
    assert "does not hold" in capsys.readouterr().out


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_setup_gives_plotly_figures_a_png_beside_them():
    import plotly.graph_objects as go
    import plotly.io as pio

    before = pio.renderers.default
    try:
        assert course.setup()
        bundle = pio.renderers._build_mime_bundle(go.Figure(go.Bar(y=[1, 3, 2])).to_dict())
        assert "application/vnd.plotly.v1+json" in bundle
        assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    finally:
        pio.renderers.default = before
