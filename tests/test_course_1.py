"""Lesson 1's new checks (course v2): predictions compared once the answer is right, the image-to-image
exercise counted by the judge from the student's own pictures, and one DDIM step by hand (exercise 4)
checked against a real trace of the classroom model."""

from __future__ import annotations

import math

import pytest
import torch

import diffviz
from diffviz.course import lesson1

from .conftest import PROMPT, generate, printed_answer, training_picture

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


# ---- exercise 4: one DDIM step by hand, on a real trace of the classroom model --------------------------
@pytest.fixture(scope="module")
def classroom_trace():
    """PROMPT on the classroom model (its own DDIM sampler), 8 steps, seed 5, guidance 7.5."""
    pipe = diffviz.classroom.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    with diffviz.trace(pipe) as run:
        pipe(PROMPT, num_inference_steps=8, guidance_scale=7.5, generator=torch.Generator().manual_seed(5))
    return run.trace


def by_hand(trace, s, ab_prev=None):
    """(x0, x_prev) of DDIM's step at ``s`` (eta = 0), in plain float maths; ``ab_prev`` overrides alpha_bar
    of the previous timestep (a named wrong answer)."""
    ab = float(trace.alpha_bar[s])
    ab_prev = float(trace.alpha_bar[s + 1]) if ab_prev is None else ab_prev
    x, eps = trace.latents[s], trace.noise_guided[s]
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    return x0, math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps


def test_check_ddim_step_accepts_the_step_the_sampler_took(classroom_trace, capsys):
    tr = classroom_trace
    assert tr.scheduler["name"] == "DDIMScheduler"
    for s in range(tr.num_steps - 1):
        assert lesson1.check_ddim_step(by_hand(tr, s), tr, s)
    s = 4
    share = float((tr.latents[s + 1] - tr.latents[s]).norm() / (tr.x0[s] - tr.latents[s]).norm())
    assert lesson1.step_share(tr, s) == pytest.approx(share, rel=1e-4)
    capsys.readouterr()
    assert lesson1.check_ddim_step(list(by_hand(tr, s)), tr, s, prediction=share + 0.04)
    out = capsys.readouterr().out
    assert "✓ Right" in out and f"{share:.0%} of the way" in out and "was close" in out
    assert lesson1.check_ddim_step(by_hand(tr, s), tr, s, prediction=share + 0.3)
    assert "was off" in capsys.readouterr().out


def test_the_printed_solution_passes_the_check(classroom_trace, capsys):
    tr, i = classroom_trace, 5
    answer = printed_answer(lesson1.solution, "ddim_step", capsys, x_t=tr.latents[i], eps=tr.noise_guided[i],
                            ab_t=tr.alpha_bar[i], ab_prev=tr.alpha_bar[i + 1])
    assert lesson1.check_ddim_step(answer, tr, i)
    with pytest.raises(ValueError, match="no solution named"):
        lesson1.solution("x0_hat")


def test_the_printed_solutions_of_exercises_1_to_3_pass_their_checks(sd_pipe, capsys):
    assert sorted(lesson1.solution) == ["ddim_step", "recoloured", "signal_step", "x0"]
    with diffviz.trace(sd_pipe) as run:  # exercise 2 asks for step 12
        generate(sd_pipe, steps=14)
    trace = run.trace
    assert lesson1.check_signal_step(printed_answer(lesson1.solution, "signal_step", capsys, torch=torch,
                                                    trace=trace), trace)
    assert lesson1.check_x0(printed_answer(lesson1.solution, "x0", capsys, trace=trace), trace, step=12)
    # the restarts of section 5, here standing in as training pictures: two drawn as OTHER, one not
    drawn = iter([training_picture(OTHER, 0), training_picture(PROMPT), training_picture(OTHER, 1)])
    z0 = torch.zeros(1, 4, 8, 8)

    def start_from(k, latents, embeds):
        assert k == 3 and latents.shape == z0.shape and embeds.shape[0] == 2  # unconditional, conditional
        return torch.from_numpy(next(drawn))

    answer = printed_answer(lesson1.solution, "recoloured", capsys, torch=torch, lesson1=lesson1,
                            pipe=sd_pipe, OTHER=OTHER, K=3, NOISES=range(3), z0=z0,
                            noised=lambda k, noise: noise,
                            seed=lambda n: torch.Generator().manual_seed(n), start_from=start_from)
    assert answer == 2


def test_check_ddim_step_rejects_named_wrong_answers(classroom_trace, capsys):
    tr, s = classroom_trace, 4
    ab, ab_prev = float(tr.alpha_bar[s]), float(tr.alpha_bar[s + 1])
    x, eps = tr.latents[s], tr.noise_guided[s]
    x0, x_prev = by_hand(tr, s)
    capsys.readouterr()
    wrong = {
        "x_prev without the square roots": ((x0, ab_prev * x0 + (1 - ab_prev) * eps), "x_prev leaves out"),
        "x0 without the square roots": (((x - (1 - ab) * eps) / ab, x_prev), "x0 leaves out"),
        "alpha_bar of this step, not the previous timestep's": (by_hand(tr, s, ab_prev=ab), "of this step"),
        "alpha_bar of the step before": (by_hand(tr, s, ab_prev=float(tr.alpha_bar[s - 1])),
                                         f"alpha_bar[{s - 1}]"),
        "no noise put back": ((x0, x0), "x0 itself"),
        "the pair swapped": ((x_prev, x0), "Hint:"),
        "the next step's x0": ((tr.x0[s + 1], x_prev), "x_prev is right, x0 is not"),
    }
    for name, (answer, says) in wrong.items():
        assert not lesson1.check_ddim_step(answer, tr, s), name
        out = capsys.readouterr().out
        assert "✗ Not yet. Hint:" in out and says in out, (name, out)
        assert "of the way" not in out  # a wrong answer reveals nothing
    assert not lesson1.check_ddim_step(x_prev, tr, s)  # one tensor, not the pair
    assert "answer a pair" in capsys.readouterr().out
    assert not lesson1.check_ddim_step(None, tr, s)
    assert "Not answered yet. Hint:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="step must be"):
        lesson1.check_ddim_step(by_hand(tr, s), tr, tr.num_steps - 1)  # no next latent to compare with
