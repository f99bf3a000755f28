"""Lesson 1, denoising step by step: reference answers and exercise checks.

Every ``check_*`` prints a verdict and returns True or False; ``None`` (unanswered) prints a hint.
"""

from __future__ import annotations

import torch

from ..trace import Trace
from . import tensor_answer, verdict


def x0_from_noise(trace: Trace, step: int) -> torch.Tensor:
    """[C, h, w] the predicted clean latent at ``step`` from the noisy latent and the guided noise
    prediction: x0 = (x_t - sqrt(1 - alpha_bar) * eps) / sqrt(alpha_bar) (epsilon prediction)."""
    ab = trace.alpha_bar[step].double()
    x, eps = trace.latents[step].double(), trace.noise_guided[step].double()
    return ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).float()


def signal_step(trace: Trace) -> int:
    """The first step whose alpha_bar is at least 0.5: from there on the latent is more signal than noise."""
    return int(torch.nonzero(trace.alpha_bar >= 0.5)[0])


def settle_step(trace: Trace, fraction: float = 0.1) -> int:
    """The first step whose predicted x0 is within ``fraction`` of the way from the first step's x0
    to the last one's: ||x0[s] - x0[-1]|| <= fraction * ||x0[0] - x0[-1]||."""
    x0 = trace.x0.float()
    dist = (x0 - x0[-1]).flatten(1).norm(dim=1)
    return int(torch.nonzero(dist <= fraction * dist[0])[0])


def check_x0(answer, trace: Trace, step: int) -> bool:
    """``answer``: [C, h, w] tensor, the predicted x0 at ``step`` computed from latents, noise and alpha_bar."""
    ref = x0_from_noise(trace, step)  # float64 maths on the stored tensors; equals trace.x0 under DDIM
    hint = (f"x0 = (latents[{step}] - sqrt(1 - alpha_bar[{step}]) * noise_guided[{step}]) / sqrt(alpha_bar[{step}]); "
            f"the result has the shape of one latent, {list(ref.shape)}.")
    ok, hint = tensor_answer(answer, ref, hint)
    return verdict(answer, ok, f"that is the model's own predicted x0 at step {step}.", hint)


def check_signal_step(answer, trace: Trace) -> bool:
    """``answer``: int, the first step at which alpha_bar >= 0.5."""
    right = signal_step(trace)
    ok = answer is not None and int(answer) == right
    return verdict(answer, ok,
                   f"from step {right} on (t={int(trace.timesteps[right])}) the latent holds more signal than noise.",
                   "look for the first index where trace.alpha_bar >= 0.5 (torch.nonzero helps).")


def check_settle_step(answer, trace: Trace, fraction: float = 0.1) -> bool:
    """``answer``: int, the first step whose x0 is within ``fraction`` of its way to the final x0."""
    right = settle_step(trace, fraction)
    ok = answer is not None and int(answer) == right
    return verdict(answer, ok,
                   f"after step {right} of {trace.num_steps} the prediction only moves by the last "
                   f"{fraction:.0%} of its way: the rest of the steps polish it.",
                   "compute d[s] = (x0[s] - x0[-1]).norm() for every step and find the first s with "
                   f"d[s] <= {fraction} * d[0].")
