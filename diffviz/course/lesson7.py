"""Checks for lesson 7, the limits measured (notebooks/07_limits.ipynb).

The checks take the student's own measurements (timings, judge verdicts, colours found), so they hold
for whatever the model does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from . import verdict


def latent_cells(pipe, size: int) -> int:
    """Latent cells (h * w) the U-Net processes for a ``size`` x ``size`` pixel image."""
    side = size // getattr(pipe, "vae_scale_factor", 8)
    return side * side


def check_latent_cells(answer: int | None, pipe, size: int) -> bool:
    """Exercise 1: how many latent cells a ``size``-pixel square image has in this model."""
    right = latent_cells(pipe, size)
    ok = answer is not None and int(answer) == right
    return verdict(answer, ok, f"{size} px / {pipe.vae_scale_factor} = {size // pipe.vae_scale_factor} latent cells "
                               f"a side, {right} in all: every layer of the U-Net works on that many positions.",
                   "the VAE shrinks each side by pipe.vae_scale_factor; the U-Net sees h * w latent cells.")


def rate(results: Sequence[bool]) -> float:
    """Share of True in ``results`` (nan when empty)."""
    return sum(map(bool, results)) / len(results) if len(results) else float("nan")


def check_generalisation_gap(answer: float | None, seen: Sequence[bool], held_out: Sequence[bool]) -> bool:
    """Exercise 2: success rate on seen colour/shape pairs minus the rate on held-out pairs (judge verdicts)."""
    right = rate(seen) - rate(held_out)
    ok = answer is not None and abs(float(answer) - right) <= 0.01
    return verdict(answer, ok, f"seen pairs {rate(seen):.0%}, never-seen pairs {rate(held_out):.0%}: a gap of "
                               f"{right:+.0%}" + (" (what the model never saw, it draws worse)." if right > 0 else "."),
                   "the rate is the share of True in a list of judge verdicts; subtract the held-out rate from the "
                   "seen one (a share, e.g. 0.25).")


def check_most_common_colour(answer: str | None, colours: Sequence[str]) -> bool:
    """Exercise 3: the colour found most often in the images of a colourless prompt (ties: any of the top)."""
    counts = Counter(colours)
    if not counts:
        ok = answer is not None and str(answer).strip().lower() in ("none", "")
        return verdict(answer, ok, "no object was found in any image, so there is no most common colour.",
                       "the list of colours is empty: answer 'none'.")
    top = max(counts.values())
    best = sorted(c for c, n in counts.items() if n == top)
    ok = answer is not None and str(answer).strip().lower() in best
    return verdict(answer, ok, f"{best[0]!r} in {top} of {sum(counts.values())} objects; "
                               f"counts {dict(counts.most_common())}.",
                   "collections.Counter(colours).most_common(1) gives the colour found most often.")


__all__ = ["check_generalisation_gap", "check_latent_cells", "check_most_common_colour", "latent_cells", "rate"]
