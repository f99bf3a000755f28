"""Support for the notebooks in notebooks/: the lesson rules, and exercise checks (one module per lesson).

The rules every lesson follows, as functions:

- ``setup()`` starts a lesson: one thread on the classroom model, and plotly figures that also carry
  a PNG (what GitHub and nbviewer show) when a browser is there to draw it.
- ``judged(prompt, image)`` checks a demo image before a lesson analyses it.
- ``saw(finding, measured, test, wrong=...)`` states a finding in words and asserts it, so a changed model
  fails the notebook instead of leaving its text false; ``wrong`` names a measurement the check rejects
  (and it is checked that it does), so no stated finding is a check that cannot fail.

Every exercise check returns True or False and prints a verdict a student can act on; a check whose
exercise asks for a prediction first takes it as ``prediction`` and compares it once the answer is right
(``predicted``). An unanswered exercise (``None``) prints a hint and returns False without raising, so
a notebook runs top to bottom before the student has answered anything. A lesson's worked answers are in
its ``solution`` (a ``Solutions``): ``lesson2.solution("top_word")`` prints one, for a student who asks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

from ..pipelines import MODEL_ENV

ON_CLASSROOM_MODEL = not os.environ.get(MODEL_ENV)  # lessons adapt their prompts to the model


class LessonClaimError(AssertionError):
    """A lesson's example or stated finding does not hold on the model it ran on."""


def setup(png: bool = True) -> bool:
    """Prepare a lesson's kernel; returns whether plotly figures carry a PNG beside them.

    On the classroom model torch gets one thread (the model is tiny: one is fastest and leaves the
    others free). With ``png``, plotly's default renderer becomes ``plotly_mimetype+png``: each figure
    is shown live and also stored as a PNG drawn by kaleido in a headless Chromium. Without a browser
    (``kaleido`` finds none) figures stay live only, and a note says so.
    """
    import plotly.io as pio

    if ON_CLASSROOM_MODEL:
        torch.set_num_threads(1)
    pio.renderers.default = "plotly_mimetype"
    if not png:
        return False
    # plotly warns at every figure when kaleido runs as a server
    warnings.filterwarnings("ignore", message="The kopts argument is ignored")
    try:
        import kaleido
        import plotly.graph_objects as go

        kaleido.start_sync_server(silence_warnings=True)
        go.Figure().to_image(format="png", width=16, height=16)  # finds the browser, or raises
    except (ImportError, RuntimeError, OSError) as err:  # no kaleido, or no browser it can drive
        print(f"Figures are live only (no PNG copy for static viewers): {type(err).__name__}. "
              "`pip install kaleido` and a Chrome or Chromium browser add one.")
        return False
    pio.renderers.default = "plotly_mimetype+png"
    return True


def judged(prompt: str, image, *, what: str = "the example") -> dict | None:
    """Judge a demo image (``[H, W, 3]`` uint8, PIL or tensor) against ``prompt`` before a lesson uses it.

    On the classroom model: prints the verdict and returns the judge's dict, or raises
    ``LessonClaimError`` naming what was drawn when it is wrong (choose another seed or prompt). On
    another model there is no judge: prints so and returns None.
    """
    if not ON_CLASSROOM_MODEL:
        print(f"{what}: no judge for this model; look at the picture yourself before reading on.")
        return None
    import numpy as np

    from ..classroom import judge

    verdict = judge.judge(prompt, np.asarray(image))
    drawn = ", ".join(f"{f.size} {f.colour} {f.shape}" for f in verdict["found"]) or "no object"
    if not verdict["correct"]:
        raise LessonClaimError(f"{what} is drawn wrong: asked {prompt!r}, the judge found {drawn}"
                               f" (relation right: {verdict['relation_ok']}). Pick a seed the model draws "
                               "right.")
    print(f"✓ {what} is drawn right (judge): {drawn}")
    return verdict


class Solutions(dict):
    """A lesson's worked answers, exercise name -> code a student runs in the notebook; calling it with a
    name prints that answer (read it after trying): ``lesson1.solution("ddim_step")``."""

    def __call__(self, exercise: str) -> None:
        if exercise not in self:
            raise ValueError(f"no solution named {exercise!r}; there is {sorted(self)}")
        print(self[exercise])


class CheckCannotFail(AssertionError):
    """A lesson's check accepts the wrong answer it names: it could not fail, so it proves nothing."""


def saw(finding: str, measured, test: Callable[[object], bool], *, wrong) -> None:
    """State a lesson's finding and check it: prints "What we saw: ..." when ``test(measured)`` holds.

    ``measured`` is what the run measured (a number, a tuple, a verdict...), ``test`` the finding as a
    predicate on it, and ``wrong`` a value the finding would be false for (what another model, or a wrong
    reading, could have measured): ``test(wrong)`` must be False, or ``CheckCannotFail`` is raised on any
    model, so every stated finding is a check that can fail and names how.

    On the classroom model a finding that no longer holds raises ``LessonClaimError`` (CI runs the
    notebooks, so a changed model fails instead of leaving the text false); on another model it
    prints that the finding does not hold there.
    """
    if test(wrong):
        raise CheckCannotFail(f"the check of {finding!r} accepts the wrong answer {wrong!r}: it cannot "
                              "fail; make it test the measurement.")
    if test(measured):
        print(f"What we saw: {finding}")
    elif ON_CLASSROOM_MODEL:
        raise LessonClaimError(f"The lesson says {finding!r}, and this run does not show it.")
    else:
        print(f"On your model this does not hold: {finding}")


def verdict(answer, ok: bool, right: str, hint: str) -> bool:
    """Print and return the outcome of one exercise check."""
    if answer is None:
        print(f"Not answered yet. Hint: {hint}")
        return False
    print(f"✓ Right: {right}" if ok else f"✗ Not yet. Hint: {hint}")
    return bool(ok)


def predicted(prediction, close: bool, measured: str) -> None:
    """After a right answer: print how the student's ``prediction`` (made before measuring) compares with
    ``measured`` (the finding in words); ``close`` says whether the prediction was near it."""
    if prediction is None:
        print(f"Measured: {measured}. (No prediction written down: the surprise is where the lesson is.)")
    else:
        print(f"Measured: {measured}. Your prediction {prediction!r} was {'close' if close else 'off'}"
              + ("." if close else ": what made you expect it?"))


def tensor_answer(answer, ref: torch.Tensor, hint: str) -> tuple[bool, str]:
    """Is ``answer`` a tensor of ``ref``'s shape, equal to it up to float16 rounding? -> (ok, hint)."""
    if answer is None:
        return False, hint
    a = torch.as_tensor(answer).float()
    if tuple(a.shape) != tuple(ref.shape):
        return False, f"your tensor has shape {list(a.shape)}, not {list(ref.shape)}. " + hint
    return bool((a - ref).norm() <= 2e-3 * ref.norm() + 1e-6), hint
