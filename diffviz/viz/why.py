"""Figures for "did it matter?": attributions and their agreement with attention.

Pure functions of an ``Attribution`` / ``Agreement`` (and the Trace they came from) -> plotly
``go.Figure``; they never run a model and never call ``show()``. Image panels use image pixel
coordinates (x right, y down), like the rest of ``diffviz.viz``. For an edit, compare the plain and
the edited trace with ``diffviz.viz.compare``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..attribution import Agreement, Attribution
from ..traces import Trace
from . import _draw as d

UNITS = {"saliency": "|gradient| (summed over embedding dims)"}
ATTENTION_COLOR, ATTRIBUTION_COLOR = "#636efa", "#ef553b"


def _where(a: Attribution) -> str:
    """What was attributed, where: "x0 at step 3 (t=801), region"."""
    region = "whole image" if bool((a.region > 0).all()) else "region"
    return f"{a.target} at step {a.step} (t={a.timestep:g}), {region}"


def _what(a: Attribution) -> str:
    return f"{a.method.replace('_', ' ')}, {_where(a)}"


def attribution_bars(a: Attribution) -> go.Figure:
    """Signed score per word (bars, prompt order), with the total IG must add up to and its delta."""
    labels = d.word_labels(a)  # reads only .words
    scores = a.word_scores.numpy()
    unit = UNITS.get(a.method, "change of the region's prediction (latent units²)")
    fig = go.Figure(go.Bar(x=labels, y=scores,
                           marker_color=np.where(scores >= 0, ATTRIBUTION_COLOR, "#00a2c7"),
                           hovertemplate="%{x}<br>%{y:.3g}<extra></extra>"))
    fig.add_hline(y=0, line_width=1, line_color="grey")
    sub = f"sum {float(a.word_scores.sum()):.3g} of total {a.total:.3g}"
    if a.delta is not None:
        sub += f" (convergence delta {a.delta:.2g})"
    fig.update_xaxes(title="word (prompt order)")
    fig.update_yaxes(title=unit)
    return fig.update_layout(title=f"Which words made it: {_what(a)}<br><sup>{sub}</sup>", width=720,
                             height=420)


def attention_vs_attribution(g: Agreement, title: str = "") -> go.Figure:
    """Side by side: each word's share of attention and of attribution in the region (left), and the two
    rankings joined word by word (right): parallel lines agree, crossing lines disagree."""
    labels = d.word_labels(g)  # reads only .words
    att = g.attention.double()
    attr = g.attribution.double()
    att_share = 100 * att / att.sum().clamp_min(1e-12)
    attr_share = 100 * attr / attr.abs().sum().clamp_min(1e-12)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.12,
                        subplot_titles=["share per word (%)", "rank (1 = most)"])
    fig.add_trace(go.Bar(x=labels, y=att_share.numpy(), name="attention", marker_color=ATTENTION_COLOR,
                         hovertemplate="%{x}<br>attention %{y:.1f}%<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=labels, y=attr_share.numpy(), name="attribution", marker_color=ATTRIBUTION_COLOR,
                         hovertemplate="%{x}<br>attribution %{y:.1f}%<extra></extra>"), row=1, col=1)
    rank_att = _ranks(att)
    rank_attr = _ranks(attr)
    for i, label in enumerate(labels):
        agree = abs(rank_att[i] - rank_attr[i]) <= 1
        fig.add_trace(go.Scatter(x=["attention", "attribution"], y=[rank_att[i], rank_attr[i]],
                                 mode="lines+markers+text", text=[label, label],
                                 textposition=["middle left", "middle right"], showlegend=False,
                                 line=dict(color="#2ca02c" if agree else "#999999", width=2),
                                 hovertemplate=f"{label}<br>%{{x}} rank %{{y}}<extra></extra>"), row=1, col=2)
    fig.update_yaxes(autorange="reversed", dtick=1, row=1, col=2)
    fig.update_xaxes(range=[-0.8, 1.8], row=1, col=2)
    fig.update_layout(barmode="group", width=900, height=440, legend=dict(orientation="h", y=-0.2))
    rho = "undefined (a constant ranking)" if np.isnan(g.spearman) else f"{g.spearman:+.2f}"
    return fig.update_layout(title=f"{title or 'Attention vs attribution'}: Spearman rank correlation {rho}")


def _ranks(x: torch.Tensor) -> list[int]:
    order = x.argsort(descending=True).tolist()
    r = [0] * len(order)
    for k, i in enumerate(order):
        r[i] = k + 1
    return r


@d.one_thread
def word_attribution(trace: Trace, a: Attribution, *, opacity: float = 0.6) -> go.Figure:
    """The attributed word two ways, over the final image: where it looks (its attention at the step,
    normalised) and what it changed, by padding occlusion (``a.pixel_map``: per pixel, how the prediction
    moves when only this word is replaced by padding; red = towards the prediction, blue = away), whatever
    ``a.method`` scored the words. The attributed region is outlined. Needs ``attribute(..., word=...)``."""
    if a.pixel_map is None or a.word is None:
        raise ValueError("this attribution has no per-pixel map; call diffviz.attribute(..., word='circle').")
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be between 0 and 1, not {opacity!r}.")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.06,
                        subplot_titles=[f"where “{a.word}” looks (attention)",
                                        f"what “{a.word}” changed (padding occlusion)"])
    uri = d.png_uri(d.final_image(trace))
    att = trace.heatmap(a.word, steps=a.step, size=d.heat_size(trace))
    m = a.pixel_map.numpy()
    lim = float(np.abs(m).max()) or 1.0
    fig.add_trace(d.image_trace(trace, uri, "image"), row=1, col=1)
    fig.add_trace(d.heat_trace(trace, att, opacity=opacity), row=1, col=1)
    fig.add_trace(d.image_trace(trace, uri, "image"), row=1, col=2)
    signed = d.heat_trace(trace, m, opacity=opacity, colorscale=d.SIGNED_COLORS, showscale=True,
                          name="contribution")
    signed.update(zmin=-lim, zmax=lim, colorbar=dict(title="contribution"),
                  hovertemplate="x %{x:.0f} px, y %{y:.0f} px<br>contribution %{z:.3g}<extra></extra>")
    fig.add_trace(signed, row=1, col=2)
    if not bool((a.region > 0).all()):
        outline = a.region.numpy()
        for c in (1, 2):
            fig.add_trace(go.Contour(z=outline, x0=0, dx=1, y0=0, dy=1, showscale=False, contours=dict(
                start=0.5, end=0.5, coloring="none"), line=dict(color="white", width=2), hoverinfo="skip",
                name="region", showlegend=False), row=1, col=c)
    for c in (1, 2):
        d.image_axes(fig, trace, 1, c)
    return fig.update_layout(title=f"“{a.word}”: attention and padding occlusion, {_where(a)}", width=820,
                             height=440)


__all__ = ["attention_vs_attribution", "attribution_bars", "word_attribution"]
