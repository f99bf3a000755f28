"""Lesson 3, guidance: reference answers and exercise checks."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..trace import Trace
from . import tensor_answer, verdict


def guided(trace: Trace, step: int) -> torch.Tensor:
    """[C, h, w] uncond + scale * (cond - uncond) at ``step``: classifier-free guidance."""
    u, c = trace.noise_uncond[step].float(), trace.noise_cond[step].float()
    return u + trace.guidance_scale * (c - u)


def clipped_fraction(image) -> float:
    """Fraction of an image's values (``[H, W, 3]`` uint8 or PIL) at 0 or 255: colours pushed past what
    the picture can show."""
    a = np.asarray(image)[..., :3]
    return float(((a == 0) | (a == 255)).mean())


def saturation(image) -> float:
    """Mean HSV saturation, 0 (grey) .. 1 (pure colour): (max - min) / max per pixel."""
    a = np.asarray(image)[..., :3].astype(np.float32)
    hi, lo = a.max(-1), a.min(-1)
    return float(np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0).mean())


def check_guided(answer, trace: Trace, step: int) -> bool:
    """``answer``: [C, h, w] tensor, the guided noise prediction at ``step``."""
    ref = guided(trace, step)
    hint = (f"combine trace.noise_uncond[{step}] and trace.noise_cond[{step}] with trace.guidance_scale; "
            f"the result has shape {list(ref.shape)}.")
    ok, hint = tensor_answer(answer, ref, hint)
    return verdict(answer, ok, "that is the noise prediction the sampler used at this step.", hint)


def check_guidance_factor(answer, trace: Trace) -> bool:
    """``answer``: float, ||guided - uncond|| / ||cond - uncond|| over the whole run."""
    u, c = trace.noise_uncond.float(), trace.noise_cond.float()
    right = float((trace.noise_guided.float() - u).norm() / (c - u).norm())
    ok = answer is not None and abs(float(answer) - right) <= 0.01 * max(1.0, abs(right))
    return verdict(answer, ok,
                   f"the ratio is {right:.3g}, the guidance scale itself: guidance walks from the unconditional "
                   f"prediction {trace.guidance_scale:g} times as far as the conditional one does.",
                   "compute (noise_guided - noise_uncond).norm() / (noise_cond - noise_uncond).norm(); "
                   "then look at the formula and say why it comes out so.")


def check_most_saturated(answer, images: Mapping[float, object]) -> bool:
    """``answer``: the guidance scale (a key of ``images``) whose image has the most clipped values."""
    scores = {s: clipped_fraction(im) for s, im in images.items()}
    right = max(scores, key=scores.get)
    ok = answer is not None and any(abs(float(answer) - s) < 1e-6 for s in scores
                                    if scores[s] == scores[right])
    return verdict(answer, ok, f"scale {right:g} clips {scores[right]:.1%} of its values to 0 or 255.",
                   "apply lesson3.clipped_fraction to each image of the sweep and take the scale with the largest.")
