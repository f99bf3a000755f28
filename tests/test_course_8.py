"""Lesson 8's exercise check on ablation effects: the largest, or "same" when none stands out."""

from __future__ import annotations

from diffviz.course import lesson8


def test_largest_effect_names_the_larger_group_or_same_when_neither_stands_out(capsys):
    clear = {"coarse": 0.30, "fine": 0.12}
    assert lesson8.check_largest_effect("coarse", clear, prediction="fine")
    assert "off" in capsys.readouterr().out  # the prediction was off
    assert not lesson8.check_largest_effect("fine", clear)
    assert lesson8.check_largest_effect("coarse", clear, clear=1.5)
    assert not lesson8.check_largest_effect("same", clear, clear=1.5)
    near = {"coarse": 0.303, "fine": 0.297}
    assert lesson8.check_largest_effect("coarse", near)  # without a rule the larger wins, by any margin
    assert not lesson8.check_largest_effect("coarse", near, clear=1.5)
    assert "'same'" in capsys.readouterr().out  # the hint names the third answer
    assert lesson8.check_largest_effect("same", near, clear=1.5, prediction="same")
    assert "close" in capsys.readouterr().out
    assert lesson8.check_largest_effect("same", {"coarse": 0.2, "fine": 0.2}, clear=1.5)
    assert not lesson8.check_largest_effect(None, near, clear=1.5)
