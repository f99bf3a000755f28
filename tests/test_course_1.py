"""Lesson 1's new checks (course v2): predictions compared once the answer is right, and the
image-to-image exercise counted by the judge from the student's own pictures."""

from __future__ import annotations

import math

import pytest

from diffviz.course import lesson1

from .conftest import training_picture

OTHER = "a blue circle left of a red square"


@pytest.fixture(scope="module")
def trace(traced6):
    return traced6




def test_distance_share_runs_from_one_to_zero(trace):
    x0 = trace.x0.double()
    s = 2
    assert lesson1.distance_share(trace, s) == pytest.approx(
        float((x0[s] - x0[-1]).norm() / (x0[0] - x0[-1]).norm()))
    assert lesson1.distance_share(trace, 0) == pytest.approx(1)
    assert lesson1.distance_share(trace, trace.num_steps - 1) == 0


def test_check_x0_compares_the_prediction_only_after_a_right_answer(trace, capsys):
    s = 2
    ab = float(trace.alpha_bar[s])
    right = (trace.latents[s] - math.sqrt(1 - ab) * trace.noise_guided[s]) / math.sqrt(ab)
    share = lesson1.distance_share(trace, s)
    assert lesson1.check_x0(right, trace, s, prediction=share + 0.1)
    out = capsys.readouterr().out
    assert f"{share:.0%} of its way" in out and "was close" in out
    assert lesson1.check_x0(right, trace, s, prediction=share + 0.5)
    assert "was off" in capsys.readouterr().out
    # a wrong answer reveals nothing
    assert not lesson1.check_x0(trace.latents[s], trace, s, prediction=share)
    assert "its way" not in capsys.readouterr().out


def test_check_signal_step_with_a_prediction(trace, capsys):
    right = lesson1.signal_step(trace)
    assert lesson1.check_signal_step(right, trace, prediction=right + 1)
    assert "was close" in capsys.readouterr().out
    assert lesson1.check_signal_step(right, trace, prediction=right + 3)
    assert "was off" in capsys.readouterr().out
    assert lesson1.check_signal_step(right, trace)
    assert "No prediction" in capsys.readouterr().out


def test_check_recoloured_counts_the_students_pictures():
    pics = [training_picture(OTHER, 0), training_picture(OTHER, 1),
            training_picture("a red circle left of a blue square")]
    assert lesson1.drawn_right(pics, OTHER) == 2
    assert lesson1.check_recoloured(2, pics, OTHER, prediction=0)
    assert not lesson1.check_recoloured(3, pics, OTHER)
    assert not lesson1.check_recoloured(0, pics, OTHER)
    assert lesson1.check_recoloured(0, pics[2:], OTHER)


def test_check_recoloured_unanswered(capsys):
    assert not lesson1.check_recoloured(None, [training_picture(OTHER)], OTHER)
    assert "Not answered yet. Hint:" in capsys.readouterr().out
    assert not lesson1.check_recoloured(1, [], OTHER)  # an answer but no pictures to count
    assert "Hint:" in capsys.readouterr().out


def test_pipeline_diagram_labels_its_arrows_with_the_traces_shapes(trace):
    fig = lesson1.pipeline_diagram(trace, text_states=(77, 32))
    labels = " ".join(a.text for a in fig.layout.annotations)
    c, h, w = trace.latents.shape[1:]
    for shape in ("token ids [77]", "text embeddings [77, 32]", f"[{c}, {h}, {w}]",
                  f"image [{trace.height}, {trace.width}, 3]", f"repeated {trace.num_steps} times"):
        assert shape in labels
    assert "(x2)" in labels  # guided: the U-Net runs with and without the prompt
    assert len(fig.layout.images) == 1  # the trace's picture at the end
