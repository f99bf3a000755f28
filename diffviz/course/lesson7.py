"""Lesson 7, the limits measured (notebooks/07_limits.ipynb): helpers and exercise checks.

The helpers compute what the lesson compares against from the classroom's own definitions (its data,
its learning curves, tensor shapes), so the lesson never states a number it did not compute. Its
exercises are predictions; ``solution("rare_colours")`` (or ``"memory_growth"``, ``"generalisation_gap"``)
prints a worked answer, the reasoning and the measurement read, for whoever asks for it on purpose.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from . import Solutions, verdict


# ---- binding and relations ---------------------------------------------------------------------------
def two_object_outcome(prompt: str, image) -> str:
    """What a two-object picture got wrong, by the judge: "right"; "relation wrong" (both objects drawn,
    the layout wrong); "attributes swapped" (the asked colours and shapes are all there, bound to the wrong
    objects, e.g. a red square and a blue circle for "a red circle ... a blue square"); "object missing"."""
    from ..classroom import judge
    from ..classroom.data import parse_caption

    v = judge.judge(prompt, np.asarray(image))
    if v["correct"]:
        return "right"
    if v["objects_ok"]:
        return "relation wrong"
    wanted, _ = parse_caption(prompt)
    colours, shapes = Counter(f.colour for f in v["found"]), Counter(f.shape for f in v["found"])
    asked_colours = Counter(w["colour"] for w in wanted if w["colour"])
    asked_shapes = Counter(w["shape"] for w in wanted)
    if asked_colours <= colours and asked_shapes <= shapes:
        return "attributes swapped"
    return "object missing"


def quality_curve(path=None, name: str = "quality_curve.json") -> list[dict]:
    """A model's learning curve: one dict per training snapshot, the ``run`` (preset) that took it, its
    ``step`` in that run, ``samples`` seen and the judge's rates on held-out prompts (``single``:
    single-object right; ``two``: two-object right; ``both_objects``: both objects drawn; ``relation``: both
    drawn and the relation right), read from the file ``name`` in the folder ``path`` (default: the shipped
    weights). ``weights/quality_curve.json`` is the shipped model's (grounded: one run from scratch);
    ``weights/quality_curve_v3_relation_mix.json`` is the model shipped before it (v3-relation-mix, grown
    over five runs, v3, v3-text, v3-batch, v3-relation and v3-relation-mix). A model grown from an earlier
    run carries that run's snapshots first, with the samples counted from the first run's start; rows
    without ``samples`` count ``step`` times the batch in that folder's ``training_log.json``."""
    from ..classroom.model import WEIGHTS

    folder = WEIGHTS if path is None else path
    rows = json.loads((folder / name).read_text())
    batch = (json.loads((folder / "training_log.json").read_text())["batch"]
             if any("samples" not in r for r in rows) else None)  # only read when a row needs it
    return [{"run": r.get("run", ""), "step": r["step"],
             "samples": r["samples"] if "samples" in r else r["step"] * batch,
             "single": r["single"]["correct"],
             "two": r["two"]["correct"], "both_objects": r["two"]["objects_ok"],
             "relation": r["two"]["relation_ok"]}
            for r in rows]


def learnt_at(curve: Sequence[dict], key: str, fraction: float = 0.5) -> int:
    """Samples seen when ``curve[key]`` first reaches ``fraction`` of its final value."""
    final = curve[-1][key]
    return next(r["samples"] for r in curve if r[key] >= fraction * final)


# ---- bias ----------------------------------------------------------------------------------------------
def colourless_share(shape: str) -> dict[str, float]:
    """The training data's colour distribution for a caption that names no colour, e.g. "a circle":
    ``COLOURLESS_DISTRIBUTION`` without the colours held out for ``shape`` (never drawn), renormalised."""
    from ..classroom.data import COLOURLESS_DISTRIBUTION, HELD_OUT_COMBOS

    allowed = {c: p for c, p in COLOURLESS_DISTRIBUTION.items() if (c, shape) not in HELD_OUT_COMBOS}
    total = sum(allowed.values())
    return {c: allowed.get(c, 0.0) / total for c in COLOURLESS_DISTRIBUTION}


# ---- compute -------------------------------------------------------------------------------------------
def latent_cells(pipe, size: int) -> int:
    """Latent cells (h * w) the U-Net processes for a ``size`` x ``size`` pixel image."""
    side = size // getattr(pipe, "vae_scale_factor", 8)
    return side * side


def score_matrix_bytes(queries: int, keys: int, heads: int = 1, batch: int = 1, itemsize: int = 2) -> int:
    """Bytes of the attention scores ``softmax(QK^T / sqrt(d))`` if they are built: ``[batch, heads, queries,
    keys]`` of ``itemsize``-byte numbers (2: float16)."""
    return batch * heads * queries * keys * itemsize


def largest_allocation(fn: Callable[[], object]) -> int:
    """Bytes of the largest single CPU allocation made while ``fn()`` runs (torch's profiler)."""
    from torch.profiler import ProfilerActivity, profile

    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)  # the profiler's C++ side prints a start and a stop line on stderr
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    return max((e.cpu_memory_usage for e in prof.events()), default=0)


# ---- exercise checks -------------------------------------------------------------------------------------
def check_memory_growth(prediction: float | None, small: int, large: int, vae_scale: int = 8) -> bool:
    """Exercise: how many times more memory one self-attention score matrix needs at ``large`` px than at
    ``small`` px (square images). Right within 10%."""
    cells = [(s // vae_scale) ** 2 for s in (small, large)]
    right = score_matrix_bytes(cells[1], cells[1]) / score_matrix_bytes(cells[0], cells[0])
    ok = prediction is not None and abs(float(prediction) - right) <= 0.1 * right
    return verdict(prediction, ok, f"{right:g}x: the side grows {large / small:g}x, "
                                   f"the cells {cells[1] / cells[0]:g}x, "
                                   "and every cell scores every cell, "
                                   "so the matrix grows with the square of the cells.",
                   "count the latent cells at each size, then remember that the matrix is cells x cells.")


def rate(results: Sequence[bool]) -> float:
    """Share of True in ``results`` (nan when empty)."""
    return sum(map(bool, results)) / len(results) if len(results) else float("nan")


GAP_ANSWERS = ("much less", "about as often")


def check_generalisation_gap(prediction: str | None, seen: Sequence[bool], held_out: Sequence[bool]) -> bool:
    """Exercise: are never-seen colour/shape pairs drawn right "much less" often than seen ones (the success
    rate on seen pairs minus the rate on never-seen pairs is 0.3 or more) or "about as often"? (judge
    verdicts)"""
    gap = rate(seen) - rate(held_out)
    right = GAP_ANSWERS[0] if gap >= 0.3 else GAP_ANSWERS[1]
    answer = None if prediction is None else str(prediction).strip().lower()
    ok = answer == right
    hint = ("answer 'much less' or 'about as often'. Think about what the model must combine to draw 'a blue "
            "triangle', and whether it ever combines words." if answer in (None, *GAP_ANSWERS) else
            f"{prediction!r} is not one of {GAP_ANSWERS}.")
    return verdict(prediction, ok, f"{right}: seen pairs {rate(seen):.0%}, "
                                   f"never-seen pairs {rate(held_out):.0%}, a gap of {gap:+.0%}.", hint)


RARE_ANSWERS = ("more", "about as often", "much less")


def check_rare_colours(prediction: str | None, colours: Sequence[str], rare: Sequence[str],
                       data_share: float) -> bool:
    """Exercise: does the model draw the rare colours ``rare`` "more" often than the data (1.5x its share or
    more), "about as often", or "much less" (under half)? ``colours``: one found colour per object drawn;
    ``data_share``: the rare colours' share of the data's colourless objects (0..1)."""
    drawn = sum(c in rare for c in colours) / len(colours) if colours else float("nan")
    right = (RARE_ANSWERS[0] if drawn >= 1.5 * data_share else RARE_ANSWERS[2] if drawn < data_share / 2
             else RARE_ANSWERS[1])
    answer = None if prediction is None else str(prediction).strip().lower()
    hint = (f"answer one of {RARE_ANSWERS}. A model that only inherits its data's bias would draw them as "
            "often as the data; think about what guidance does to what is not typical of a caption."
            if answer in (None, *RARE_ANSWERS) else f"{prediction!r} is not one of {RARE_ANSWERS}.")
    return verdict(prediction, answer == right,
                   f"{right}: the rare colours ({', '.join(rare)}) are {drawn:.0%} of "
                   f"the {len(colours)} objects drawn, {data_share:.0%} of the data.", hint)


solution = Solutions(
    rare_colours="""\
# Guidance pushes each picture towards what is most typical of its caption (lesson 4): the common colour.
colours = [c for cs in drawn.values() for c in cs]  # every object's colour
share = sum(c in RARE for c in colours) / len(colours)  # the rare colours' share, against rare_data
my_rare = ("more" if share >= 1.5 * rare_data else "much less" if share < rare_data / 2
           else "about as often")""",
    memory_growth="""\
cells = {size: (size // 8) ** 2 for size in (512, 1024)}  # latent cells: the VAE makes each side 8x smaller
my_growth = (cells[1024] / cells[512]) ** 2  # a score per pair of cells: the cells' growth squared""",
    generalisation_gap="""\
# Each colour and each shape was drawn many times, only not together: the rates say if that is enough.
gap = lesson7.rate(seen) - lesson7.rate(held_out)  # seen pairs' success rate minus never-seen pairs'
my_gap = "much less" if gap >= 0.3 else "about as often"  # the exercise's rule: a gap of 0.3 or more""",
)

__all__ = ["GAP_ANSWERS", "RARE_ANSWERS", "check_generalisation_gap", "check_memory_growth",
           "check_rare_colours", "colourless_share", "largest_allocation", "latent_cells", "learnt_at",
           "quality_curve", "rate", "score_matrix_bytes", "solution", "two_object_outcome"]
