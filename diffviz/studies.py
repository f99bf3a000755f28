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
    iou         on classroom prompts: IoU of the heat map (at image size, >= IOU_THRESHOLD of its max)
                with the mask of the word's object as the judge finds it (NaN: a word with no object,
                such as "a" or "left", or an object the judge did not find in the image)

``word_class``: "colour", "shape", "size", "relation" or "article" for the classroom's words, else None.
Item columns: ``id``, ``prompt``, ``seed``, ``steps``, ``file``; on classroom prompts the judge's
``correct``, ``objects_ok``, ``relation`` ("left of", ...) and ``relation_ok``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .batch import read_index
from .classroom import data as classroom_data
from .summary import Summary, load_summary, summarize

METRICS = ("share", "entropy", "centroid_x", "centroid_y", "spread", "peak")
IOU_THRESHOLD = 0.4  # as benchmarks/classroom_quality.py
_RELATION_WORDS = {w for r in classroom_data.RELATIONS for w in r.split()}


def word_class(word: str) -> str | None:
    """The classroom grammar's class of ``word``: "colour", "shape", "size", "relation", "article" or None."""
    w = word.lower()
    if w in classroom_data.COLOURS:
        return "colour"
    if w in classroom_data.SHAPES:
        return "shape"
    if w in classroom_data.SIZES:
        return "size"
    if w in _RELATION_WORDS:
        return "relation"
    return "article" if w in ("a", "an", "the") else None


@torch.no_grad()
def study(path: str | Path, *, progress: bool = False):
    """A pandas DataFrame, one row per (item, word) of the items of batch folder ``path`` that succeeded
    (columns in the module docstring). ``df.attrs["windows"]``: window name -> its step ranges seen."""
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
        records += _rows(item, summary)
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


def _rows(item, summary: Summary) -> list[dict]:
    """The study rows of one item."""
    spans = [None, *range(len(summary.windows))]
    values = {k: metrics(summary.word_maps(k)) for k in spans}
    masks, verdict = _classroom_masks(item.prompt, summary)
    base = dict(id=item.id, prompt=item.prompt, seed=item.seed, steps=item.steps, file=item.file)
    if verdict is not None:
        base |= dict(correct=verdict["correct"], objects_ok=verdict["objects_ok"],
                     relation=verdict["relation"], relation_ok=verdict["relation_ok"])
    rows = []
    for wi, word in enumerate(summary.words):
        row = base | dict(word_index=wi, word=word, word_class=word_class(word))
        for k in spans:
            suffix = "" if k is None else f"_w{k}"
            row |= {f"{m}{suffix}": float(v[wi]) for m, v in values[k].items()}
            if masks is not None:
                row[f"iou{suffix}"] = _iou(summary, wi, k, masks[wi])
        rows.append(row)
    return rows


def _classroom_masks(prompt: str, summary: Summary):
    """(per word: the bool [H, W] mask of its object as the judge found it, or None; the verdict) for a
    prompt of the classroom grammar with an image; (None, None) otherwise."""
    if summary.image is None:
        return None, None
    caption = " ".join(prompt.lower().split())
    try:
        _, relation = classroom_data.parse_caption(caption)
    except ValueError:
        return None, None
    words = classroom_data.word_objects(caption)
    if [w for w, _ in words] != [w.lower() for w in summary.words]:
        return None, None
    from .classroom.judge import judge

    verdict = judge(caption, summary.image.numpy())
    masks = [None if obj is None or verdict["matched"][obj] is None else verdict["matched"][obj].mask
             for _, obj in words]
    return masks, verdict | {"relation": relation}


def _iou(summary: Summary, word: int, window: int | None, mask: np.ndarray | None) -> float:
    if mask is None:
        return float("nan")
    heat = summary.heatmap(word, window=window, size=tuple(mask.shape)).numpy()
    hit = heat >= IOU_THRESHOLD * heat.max() if heat.max() > 0 else np.zeros_like(mask)
    return float((hit & mask).sum() / max((hit | mask).sum(), 1))
