"""Lesson 2's new checks (course v2): the padding's share of the attention, and predictions compared
once the answer is right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffviz
from diffviz import heatmap
from diffviz.course import lesson2

from .conftest import generate, printed_answer


@pytest.fixture(scope="module")
def trace(sd_pipe):
    """All 77 token positions kept, 6 DDIM steps."""
    with diffviz.trace(sd_pipe, tokens="all") as tr:
        generate(sd_pipe, steps=6)
    return tr


def _shares(trace) -> tuple[float, float]:
    """(start, end and padding) mean attention, each layer counting once, computed from the raw tensors."""
    start = [i for i, t in enumerate(trace.tokens) if t.position == 0]
    pad = [i for i, t in enumerate(trace.tokens) if t.word is None and t.position != 0]
    per_layer = [(float(trace.attn[l.name][:, :, start].float().sum(2).mean()),
                  float(trace.attn[l.name][:, :, pad].float().sum(2).mean())) for l in trace.layers]
    return tuple(np.mean(per_layer, axis=0))


def test_check_padding_share(trace, capsys):
    start, pad = _shares(trace)
    assert lesson2.padding_share(trace) == pytest.approx(pad, abs=1e-5)
    larger = "padding" if pad > start else "start"
    assert lesson2.check_padding_share(pad, trace, prediction=larger)
    assert "was close" in capsys.readouterr().out
    assert lesson2.check_padding_share(pad, trace, prediction=({"start", "padding"} - {larger}).pop())
    assert "was off" in capsys.readouterr().out
    assert not lesson2.check_padding_share(start, trace)  # the start token's share instead
    assert not lesson2.check_padding_share(pad + 0.05, trace)
    assert not lesson2.check_padding_share(100 * pad, trace)  # a percentage is not a share
    assert not lesson2.check_padding_share(None, trace)


def test_check_padding_share_needs_the_padding(sd_pipe):
    with diffviz.trace(sd_pipe) as words_only:
        generate(sd_pipe, steps=2)
    with pytest.raises(ValueError, match="tokens='all'"):
        lesson2.check_padding_share(0.5, words_only)


def test_predictions_are_compared_after_a_right_answer(trace, capsys):
    top = lesson2.top_word(trace)
    other = next(w for w in trace.words if w != top)
    assert lesson2.check_top_word(top, trace, prediction=top)
    assert "was close" in capsys.readouterr().out
    assert lesson2.check_top_word(top, trace, prediction=other)
    assert "was off" in capsys.readouterr().out
    assert not lesson2.check_top_word(other, trace, prediction=top)
    assert "Measured" not in capsys.readouterr().out  # a wrong answer reveals nothing
    peak = lesson2.peak_step(trace, "red")
    assert lesson2.check_peak_step(peak, trace, "red", prediction=peak + 1)
    assert "was close" in capsys.readouterr().out
    assert lesson2.check_peak_step(peak, trace, "red")
    assert "No prediction" in capsys.readouterr().out


def test_the_printed_solutions_pass_their_checks(trace, capsys):
    word = "circle"
    checks = {"top_word": lambda answer: lesson2.check_top_word(answer, trace),
              "peak_step": lambda answer: lesson2.check_peak_step(answer, trace, word),
              "padding_share": lambda answer: lesson2.check_padding_share(answer, trace)}
    given = {"trace": trace, "heatmap": heatmap, "torch": torch, "WORD": word}
    assert sorted(lesson2.solution) == sorted(checks)  # one worked answer per exercise
    for name, check in checks.items():  # each run on the notebook's names at its exercise
        assert check(printed_answer(lesson2.solution, name, capsys, **given)), name
        assert "✓ Right" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no solution named"):
        lesson2.solution("top")
