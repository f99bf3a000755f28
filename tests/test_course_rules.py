"""The lesson rules as functions: a demo image is judged before use, a stated finding is asserted (and its
check names a wrong answer it rejects), and plotly figures carry a PNG for static viewers."""

from __future__ import annotations

import ast
import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffviz import course

from .conftest import training_picture

# the lessons whose every stated finding names the wrong answer its check rejects (saw(..., test, wrong=...))
LESSONS_NAMING_WRONG = list(range(1, 12))  # every lesson
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


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


def test_saw_checks_a_measurement_and_the_wrong_answer_it_names(monkeypatch, capsys):
    course.saw("the map peaks in the left half", 10, lambda x: x < 16, wrong=24)
    assert capsys.readouterr().out == "What we saw: the map peaks in the left half\n"
    course.saw("a beats b", {"a": 2, "b": 1}, lambda m: m["a"] > m["b"], wrong={"a": 1, "b": 2})
    assert "a beats b" in capsys.readouterr().out
    with pytest.raises(course.LessonClaimError, match="the map peaks in the left half"):
        course.saw("the map peaks in the left half", 20, lambda x: x < 16, wrong=24)
    with pytest.raises(course.CheckCannotFail, match="accepts the wrong answer 15"):
        course.saw("the map peaks in the left half", 10, lambda x: x < 16, wrong=15)
    with pytest.raises(course.CheckCannotFail):  # a check that ignores its measurement accepts any answer
        course.saw("it holds", 10, lambda x: True, wrong=24)
    monkeypatch.setattr(course, "ON_CLASSROOM_MODEL", False)  # elsewhere a false finding is only reported
    course.saw("the map peaks in the left half", 20, lambda x: x < 16, wrong=24)
    assert "does not hold" in capsys.readouterr().out
    with pytest.raises(course.CheckCannotFail):  # a check that cannot fail is wrong on any model
        course.saw("it holds", 10, lambda x: True, wrong=24)


def saw_calls_naming_no_wrong(notebook: Path) -> list[str]:
    """'notebook cell N line L' for each saw(...) call in a code cell that does not pass a test and wrong=."""
    bad = []
    for n, cell in enumerate(json.loads(notebook.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        # IPython's magics and shell escapes are not Python
        lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
        for node in ast.walk(ast.parse("\n".join(lines))):
            name = getattr(node, "func", None)
            name = getattr(name, "attr", None) or getattr(name, "id", None)
            if not (isinstance(node, ast.Call) and name == "saw"):
                continue
            keywords = {k.arg for k in node.keywords}
            if "wrong" not in keywords or (len(node.args) < 3 and "test" not in keywords):
                bad.append(f"{notebook.name} cell {n} line {node.lineno}")
    return bad


def test_every_finding_of_the_lessons_names_a_wrong_answer():
    notebooks = [nb for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
                 if int(nb.name[:2]) in LESSONS_NAMING_WRONG]
    assert [int(nb.name[:2]) for nb in notebooks] == LESSONS_NAMING_WRONG
    bad = [where for nb in notebooks for where in saw_calls_naming_no_wrong(nb)]
    assert not bad, ("these saw() calls state a finding without the wrong answer their check rejects "
                     "(course.saw(finding, measured, test, wrong=...)): " + "; ".join(bad))


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
