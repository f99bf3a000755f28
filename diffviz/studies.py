"""``diffviz.study(DIR)``: the items of a ``diffviz batch`` folder as one pandas DataFrame, one row per
(item, word). Files are read one at a time, so a study never holds every trace in memory.

Per word, for all steps (plain column names) and for each step window k (suffix ``_w{k}``; the
windows are the summaries' own, by default the first, middle and last third of the steps), computed
on the word's attention map on the common latent grid (``Summary.word_maps``):

    share       percent of the attention all prompt words receive that goes to this word
    entropy     of the map as a distribution over cells, divided by log(cells): 1 = even, 0 = one cell
    centroid_x  attention-weighted centre, as a fraction of the image width (0 left, 1 right)
    centroid_y  the same, down the image (0 top)
    spread      attention-weighted distance from the centroid, as a fraction of the image side
    peak        the largest cell's attention over the mean cell's (1 = even)
    iou         with a grader, on the prompts it grades: IoU of the heat map (at image size, >=
                IOU_THRESHOLD of its max) with the mask of the word's object as the grader finds it
                (NaN: a word with no object, such as "a" or "left", or an object not found in the image)

Item columns: ``id``, ``prompt``, ``seed``, ``steps``, ``file``. A ``grader`` (``diffviz.classroom.grader``
for the classroom grammar) adds ``word_class`` per word ("colour", "shape", "size", "relation",
"article", or None) and, on the prompts it grades, its item columns (the classroom judge's ``correct``,
``objects_ok``, ``relation`` ("left of", ...) and ``relation_ok``) and ``iou``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .batch import read_index
from .summary import Summary, load_summary, summarize


class Grader(Protocol):
    """What a study learns from a grammar of prompts (``diffviz.classroom.grader`` is one)."""

    def word_class(self, word: str) -> str | None: ...

    def grade(self, prompt: str, words: list[str],
              image: np.ndarray) -> tuple[list[np.ndarray | None], dict] | None:
        """(per word: bool [H, W] mask of its object or None; item columns) or None: not graded."""

METRICS = ("share", "entropy", "centroid_x", "centroid_y", "spread", "peak")
IOU_THRESHOLD = 0.4  # as benchmarks/classroom_quality.py
@torch.no_grad()
def study(path: str | Path, *, grader: Grader | None = None, progress: bool = False):
    """A pandas DataFrame, one row per (item, word) of the items of batch folder ``path`` that succeeded
    (columns in the module docstring; ``grader`` adds word classes, verdicts and IoU).
    ``df.attrs["windows"]``: window name -> its step ranges seen."""
    import pandas as pd
    from tqdm.auto import tqdm

    path = Path(path)
    index = read_index(path)
    ok = index[index["status"] == "ok"]
    records: list[dict] = []
    windows: dict[str, set] = {}
    for item in tqdm(list(ok.itertuples(index=False)), desc="study", unit="item", disable=not progress):
        summary = _open(path / item.file)
        for k, span in enumerate(summary.windows):
            windows.setdefault(f"w{k}", set()).add(tuple(span))
        records += _rows(item, summary, grader)
    df = pd.DataFrame.from_records(records)
    df.attrs["windows"] = {k: sorted(v) for k, v in windows.items()}
    return df


def _open(file: Path) -> Summary:
    if file.suffix == ".dvz":
        from .io import load_trace

        return summarize(load_trace(file))
    return load_summary(file)


def metrics(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """``METRICS`` of each word's map: ``maps`` [word, h, w] unnormalised attention -> name -> [word]."""
    n_words, h, w = maps.shape
    maps = maps.float().clamp_min(0)
    mass = maps.mean(dim=(-2, -1))
    p = maps.reshape(n_words, -1)
    p = p / p.sum(1, keepdim=True).clamp_min(1e-12)  # [word, cell]
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    cx, cy = p @ xs, p @ ys
    spread = (p * ((xs[None] - cx[:, None]) ** 2 + (ys[None] - cy[:, None]) ** 2)).sum(1).sqrt()
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1) / math.log(h * w) if h * w > 1 else torch.zeros(n_words)
    return {"share": 100 * mass / mass.sum().clamp_min(1e-12), "entropy": entropy, "centroid_x": cx,
            "centroid_y": cy, "spread": spread, "peak": p.amax(1) * h * w}


def _rows(item, summary: Summary, grader: Grader | None) -> list[dict]:
    """The study rows of one item."""
    spans = [None, *range(len(summary.windows))]
    values = {k: metrics(summary.word_maps(k)) for k in spans}
    graded = None
    if grader is not None and summary.image is not None:
        graded = grader.grade(item.prompt, summary.words, summary.image.numpy())
    base = dict(id=item.id, prompt=item.prompt, seed=item.seed, steps=item.steps, file=item.file)
    if graded is not None:
        base |= graded[1]
    rows = []
    for wi, word in enumerate(summary.words):
        row = base | dict(word_index=wi, word=word)
        if grader is not None:
            row["word_class"] = grader.word_class(word)
        for k in spans:
            suffix = "" if k is None else f"_w{k}"
            row |= {f"{m}{suffix}": float(v[wi]) for m, v in values[k].items()}
            if grader is not None:
                row[f"iou{suffix}"] = _iou(summary, wi, k, None if graded is None else graded[0][wi])
        rows.append(row)
    return rows


def _iou(summary: Summary, word: int, window: int | None, mask: np.ndarray | None) -> float:
    if mask is None:
        return float("nan")
    heat = summary.heatmap(word, window=window, size=tuple(mask.shape)).numpy()
    hit = heat >= IOU_THRESHOLD * heat.max() if heat.max() > 0 else np.zeros_like(mask)
    return float((hit & mask).sum() / max((hit | mask).sum(), 1))
