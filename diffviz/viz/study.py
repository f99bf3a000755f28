"""``study_report(df, path)``: one self-contained HTML file with the distributions of a study
(``diffviz.study``), plotly.js inlined as in ``report`` so it opens offline."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from .. import __version__
from .html_report import STYLE, figure_html

CLASSES = ("colour", "shape", "size", "relation", "article", "other")


def _windows(df) -> list[str]:
    return sorted({c.removeprefix("share_") for c in df.columns if c.startswith("share_w")})


def _by_class(df, column: str, title: str, y: str) -> go.Figure:
    """Box plots of ``column`` (all steps and each window) per word class (a study made with a grader),
    else over all words."""
    fig = go.Figure()
    classes = df["word_class"].fillna("other") if "word_class" in df else ["all words"] * len(df)
    for suffix in ["", *[f"_{w}" for w in _windows(df)]]:
        name = f"{column}{suffix}"
        fig.add_box(x=classes, y=df[name], name=suffix.lstrip("_") or "all steps", boxmean=True)
    fig.update_layout(title=title, boxmode="group", yaxis_title=y, xaxis_title="word class",
                      xaxis=dict(categoryorder="array", categoryarray=list(CLASSES)), height=420)
    return fig


def _miou(df) -> go.Figure:
    """Mean IoU per word class, for all steps and each window (words with an object found only)."""
    fig = go.Figure()
    has = df.dropna(subset=["iou"])
    for suffix in ["", *[f"_{w}" for w in _windows(df)]]:
        means = has.groupby("word_class")[f"iou{suffix}"].mean()
        fig.add_bar(x=list(means.index), y=list(means.values), name=suffix.lstrip("_") or "all steps")
    fig.update_layout(title="mIoU of the word's heat map with its object, by word class", barmode="group",
                      yaxis=dict(title="mean IoU", range=[0, 1]), height=400)
    return fig


def _relations(df) -> go.Figure:
    items = df.drop_duplicates("id").dropna(subset=["relation"])
    acc = items.groupby("relation")["relation_ok"].agg(["mean", "size"])
    fig = go.Figure(go.Bar(x=list(acc.index), y=list(acc["mean"]), text=[f"n={n}" for n in acc["size"]]))
    fig.update_layout(title="Relation right, by relation (the judge)", yaxis=dict(title="share of images",
                      range=[0, 1]), height=360)
    return fig


def study_report(df, path: str | Path, *, title: str = "diffviz study") -> Path:
    """Write one self-contained HTML report of the study DataFrame ``df`` to ``path``; returns the path."""
    path = Path(path)
    n_items = df["id"].nunique() if len(df) else 0
    parts = []
    if len(df):
        figures = [
            ("How much of the prompt's attention each word gets",
             _by_class(df, "share", "Attention share", "percent")),
            ("How far each word's attention spreads", _by_class(df, "spread", "Spread around the centroid",
                                                               "fraction of the image side")),
            ("How even each word's attention is",
             _by_class(df, "entropy", "Normalised entropy", "0 one cell, 1 even")),
        ]
        if "iou" in df and df["iou"].notna().any():
            figures.insert(0, ("Does each word look at its object?", _miou(df)))
        if "relation" in df and df["relation"].notna().any():
            figures.append(("Relations", _relations(df)))
        parts = [f"<h2>{html.escape(t)}</h2>\n" + figure_html(f, f"fig{i}")
                 for i, (t, f) in enumerate(figures)]
    windows = df.attrs.get("windows", {})
    spans = "; ".join(f"{k}: steps {', '.join(f'{a}-{b - 1}' for a, b in v)}" for k, v in windows.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">{n_items} items, {len(df)} (item, word) rows.
Step windows: {html.escape(spans or "none")}.</p>
{chr(10).join(parts) if parts else "<p>No item of this folder succeeded: nothing to show.</p>"}
<p class="meta">Made with diffviz {__version__}. Works offline: everything is in this file.</p>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
