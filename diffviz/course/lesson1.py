"""Lesson 1, denoising step by step: reference answers and exercise checks.

Every ``check_*`` prints a verdict and returns True or False; ``None`` (unanswered) prints a hint. A
``prediction`` (written before measuring) is compared once the answer is right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..trace import Trace
from . import predicted, tensor_answer, verdict


def x0_from_noise(trace: Trace, step: int) -> torch.Tensor:
    """[C, h, w] the predicted clean latent at ``step`` from the noisy latent and the guided noise
    prediction: x0 = (x_t - sqrt(1 - alpha_bar) * eps) / sqrt(alpha_bar) (epsilon prediction)."""
    ab = trace.alpha_bar[step].double()
    x, eps = trace.latents[step].double(), trace.noise_guided[step].double()
    return ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).float()


def signal_step(trace: Trace) -> int:
    """The first step whose alpha_bar is at least 0.5: from there on the latent is more signal than noise."""
    return int(torch.nonzero(trace.alpha_bar >= 0.5)[0])


def distance_share(trace: Trace, step: int) -> float:
    """||x0[step] - x0[-1]|| / ||x0[0] - x0[-1]||: how much of its way to the final x0 the guess at
    ``step`` still has to go (1 at step 0, 0 at the last step)."""
    x0 = trace.x0.double()
    return float((x0[step] - x0[-1]).norm() / (x0[0] - x0[-1]).norm())


def drawn_right(images: Sequence, prompt: str) -> int:
    """How many of ``images`` (``[H, W, 3]`` uint8 or PIL, classroom pictures) the judge finds right for ``prompt``."""
    from ..classroom import judge

    return sum(bool(judge.judge(prompt, np.asarray(im))["correct"]) for im in images)


def check_x0(answer, trace: Trace, step: int, prediction: float | None = None) -> bool:
    """``answer``: [C, h, w] tensor, the predicted x0 at ``step`` computed from latents, noise and alpha_bar.
    ``prediction``: the share of its way to the final x0 that the guess at ``step`` still has to go, 0..1."""
    ref = x0_from_noise(trace, step)  # float64 maths on the stored tensors; equals trace.x0 under DDIM
    hint = (f"x0 = (latents[{step}] - sqrt(1 - alpha_bar[{step}]) * noise_guided[{step}]) / sqrt(alpha_bar[{step}]); "
            f"the result has the shape of one latent, {list(ref.shape)}.")
    ok, hint = tensor_answer(answer, ref, hint)
    if not verdict(answer, ok, f"that is the model's own predicted x0 at step {step}.", hint):
        return False
    share = distance_share(trace, step)
    close = prediction is not None and abs(float(prediction) - share) <= 0.15
    predicted(prediction, close, f"at step {step} of {trace.num_steps} the guess still has {share:.0%} of its way "
                                 "to the final x0 to go")
    return True


def check_signal_step(answer, trace: Trace, prediction: int | None = None) -> bool:
    """``answer``: int, the first step at which alpha_bar >= 0.5; ``prediction``: the step guessed before."""
    right = signal_step(trace)
    ok = answer is not None and int(answer) == right
    if not verdict(answer, ok, f"from step {right} on (t={int(trace.timesteps[right])}) the latent holds more "
                               "signal than noise.",
                   "look for the first index where trace.alpha_bar >= 0.5 (torch.nonzero helps)."):
        return False
    close = prediction is not None and abs(int(prediction) - right) <= 1
    predicted(prediction, close, f"{right} of {trace.num_steps} steps pass before signal outweighs noise")
    return True


def check_recoloured(answer, images: Sequence, prompt: str, prediction: int | None = None) -> bool:
    """``answer``: int, how many of ``images`` the judge finds drawn as ``prompt``; ``prediction``: the count
    guessed before running them. Classroom pictures only (the judge knows its shapes and colours)."""
    hint = ("run start_from(K, noised, other_embeds) once per noise seed, collect the pictures, and count those "
            "for which diffviz.course.judged would pass (diffviz.classroom.judge.judge(prompt, image)['correct']).")
    if answer is None or not images:
        return verdict(None, False, "", hint)
    right = drawn_right(images, prompt)
    if not verdict(answer, int(answer) == right, f"the judge finds {right} of your {len(images)} pictures drawn "
                                                 f"as {prompt!r}.", hint):
        return False
    close = prediction is not None and abs(int(prediction) - right) <= 1
    predicted(prediction, close, f"{right} of {len(images)} pictures took the new prompt's colours")
    return True
