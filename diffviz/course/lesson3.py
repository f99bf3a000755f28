"""Lesson 3, guidance: reference answers and exercise checks.

A ``prediction`` (written before measuring) is compared once the answer is right. ``solution(name)``
prints a worked answer ("guided", "overshoot", "furthest"), for whoever asks for it on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..traces import Trace, guide
from . import Solutions, predicted, tensor_answer, verdict
from .lesson5 import region_change


def guided(trace: Trace, step: int) -> torch.Tensor:
    """[C, h, w] uncond + scale * (cond - uncond) at ``step``: classifier-free guidance."""
    return guide(trace.noise_uncond[step].float(), trace.noise_cond[step].float(), trace.guidance_scale)


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


def redness(image) -> float:
    """Share of an image's pixels (``[H, W, 3]`` uint8 or PIL) that are red: red channel above 100 and at
    least twice the other two."""
    a = np.asarray(image, np.float32)[..., :3]
    return float(((a[..., 0] > 100) & (a[..., 0] >= 2 * a[..., 1:].max(-1))).mean())


def red_count(images) -> int:
    """How many of ``images`` show something red (over 2% of their pixels red)."""
    return sum(redness(im) > 0.02 for im in images)


def change(pictures: Sequence, baseline: Sequence) -> float:
    """Mean |ΔRGB| (in [0, 1]) between each of ``pictures`` and the ``baseline`` picture of the same seed
    (``lesson5.region_change`` over the whole image), averaged over the seeds."""
    if len(pictures) != len(baseline):
        raise ValueError(f"{len(pictures)} pictures against {len(baseline)} baseline pictures: pass one of "
                         "each per seed, in the same order.")
    return float(np.mean([region_change(a, b) for a, b in zip(pictures, baseline)]))


def overshoot(trace: Trace, step: int, real_std: float) -> float:
    """std of the predicted x0 at ``step`` over ``real_std``, the std of real pictures' latents."""
    return float(trace.x0[step].float().std()) / real_std


def check_guided(answer, trace: Trace, step: int, prediction: float | None = None) -> bool:
    """``answer``: [C, h, w] tensor, the guided noise prediction at ``step``. ``prediction``: the ratio
    ||guided - uncond|| / ||cond - uncond|| expected before computing it."""
    ref = guided(trace, step)
    hint = (f"combine trace.noise_uncond[{step}] and trace.noise_cond[{step}] with trace.guidance_scale; "
            f"the result has shape {list(ref.shape)}.")
    ok, hint = tensor_answer(answer, ref, hint)
    if not verdict(answer, ok, "that is the noise prediction the sampler used at this step.", hint):
        return False
    u, c = trace.noise_uncond[step].float(), trace.noise_cond[step].float()
    ratio = float((ref - u).norm() / (c - u).norm())
    close = prediction is not None and abs(float(prediction) - ratio) <= 0.05 * ratio
    predicted(prediction, close,
              f"||guided - uncond|| / ||cond - uncond|| = {ratio:.3g}, the guidance scale: "
              "guidance walks that many times as far from the unconditional prediction")
    return True


def check_overshoot(answer, trace: Trace, step: int, real_std: float,
                    prediction: float | None = None) -> bool:
    """``answer``: float, std of ``trace``'s predicted x0 at ``step`` over ``real_std`` (real pictures'
    latents); ``prediction``: the ratio guessed before."""
    right = overshoot(trace, step, real_std)
    ok = answer is not None and abs(float(answer) - right) <= 0.02 * right
    s = f"{trace.guidance_scale:g}"
    hint = (f"measure the scale-{s} run of the sweep (sweep[{s}]), not the running example `trace`: the "
            f"size (standard deviation) of its predicted x0 at step EARLY = {step}, against the size of real "
            "latents (real_z); the answer is one number.")
    if not verdict(answer, ok, f"at step {step} the guess is {right:.2f} times the size of real latents.",
                   hint):
        return False
    close = prediction is not None and abs(float(prediction) - right) <= 0.25 * right
    predicted(prediction, close, f"a ratio of {right:.2f} at guidance {trace.guidance_scale:g}")
    return True


def check_furthest(answer, negatives: Mapping[str | None, Sequence], prediction: str | None = None) -> bool:
    """``answer``: the negative prompt whose pictures ``change`` most from those made without one;
    ``negatives`` maps each negative prompt to its pictures, one per seed, and None to the pictures made
    without a negative prompt; ``prediction``: the negative guessed before."""
    hint = ("apply lesson3.change(negatives[neg], negatives[None]) to each negative prompt and take the "
            "negative with the largest change.")
    changes = {neg: change(ims, negatives[None]) for neg, ims in negatives.items() if neg is not None}
    if answer is None or not changes:
        return verdict(None, False, "", hint)
    furthest = max(changes, key=changes.get)
    said = f"{furthest!r} changes the pictures most: {changes[furthest]:.3f} of the full scale."
    if not verdict(answer, answer == furthest, said, hint):
        return False
    measured = ", ".join(f"{neg!r} {c:.3f}" for neg, c in changes.items())
    predicted(prediction, prediction == furthest, f"change from the pictures without a negative: {measured}")
    return True


solution = Solutions(
    guided="""\
uncond, cond = trace.noise_uncond[5].float(), trace.noise_cond[5].float()  # [C, h, w] each, at step 5
answer = uncond + trace.guidance_scale * (cond - uncond)""",
    overshoot="""\
answer = float(sweep[20].x0[EARLY].float().std()) / float(real_z.std())  # the scale-20 run""",
    furthest="""\
changes = {neg: lesson3.change(negatives[neg], negatives[None]) for neg in NEGATIVES}  # None is the baseline
answer = max(changes, key=changes.get)""",
)
