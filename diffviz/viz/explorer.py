"""``explore(trace)``: an ipywidgets app to step through a generation and ask where each word looks.

Every control redraws from data already in the trace (no model call): pictures are the fast
linear preview, PNG-encoded once per step and cached; the heat maps of the current word, layer
and head selection are computed for all steps at once, so moving the step slider only swaps arrays.
"""

from __future__ import annotations

import functools
from typing import Sequence

import ipywidgets as widgets
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .. import heatmap
from ..trace import Trace
from . import _draw as d

# trace indices in the figure
X0, NOISY, IMAGE, HEAT, LINES = 0, 1, 2, 3, 4
ALL, MEAN = "all", -1  # dropdown values for "no layer filter" and "mean of heads" (None means "no selection")


class Explorer(widgets.VBox):
    """The explorer app: controls above one plotly ``FigureWidget`` (``.figure``).

    Top row: predicted x0 and the noisy latent at the step, and the picked words' heat map at that
    step over the final image (one colour scale over all steps, so a word fades in and out).
    Bottom: each word's share of the attention per step, picked words bold, the step marked.
    """

    @d.one_thread
    def __init__(self, trace: Trace, words: Sequence[str | int] | None = None, *, opacity: float = 0.6):
        if trace.num_steps == 0:
            raise ValueError("this trace is empty: nothing was generated inside its "
                             "`with diffviz.trace(pipe)` block.")
        self.trace = trace
        self._pictures: dict[tuple[str, int], str] = {}
        self._maps = None  # [step, h, w] heat maps of the current selection
        self._zmax = 1.0
        labels = d.word_labels(trace)
        picked = [d.default_word(trace)] if words is None else _word_ids(trace, words)

        self.step = widgets.IntSlider(0, 0, trace.num_steps - 1, description="step", continuous_update=True,
                                      layout=widgets.Layout(width="420px"))
        self.play = widgets.Play(value=0, min=0, max=trace.num_steps - 1, interval=250, description="play")
        widgets.jslink((self.play, "value"), (self.step, "value"))
        options = [(label, i) for i, label in enumerate(labels)]
        self.words = widgets.SelectMultiple(options=options, value=tuple(picked), rows=min(8, len(labels)),
                                            description="words")
        self.layers = widgets.Dropdown(options=_layer_options(trace), value=ALL, description="layers")
        self.heads = widgets.Dropdown(options=[("mean of heads", MEAN)], value=MEAN, description="head")
        self._quiet = False  # set while the head options are rebuilt, so the heat maps are computed once
        self.opacity = widgets.FloatSlider(opacity, min=0, max=1, step=0.05, description="opacity",
                                           continuous_update=True)
        self._update_head_options()

        self.figure = self._build_figure()
        self._select()
        self._show_step()
        self._draw_lines()
        self.step.observe(lambda _: self._on_step(), "value")
        self.words.observe(lambda _: self._on_selection(), "value")
        self.heads.observe(lambda _: self._quiet or self._on_selection(), "value")
        self.layers.observe(lambda _: self._on_layers(), "value")
        self.opacity.observe(lambda _: self._on_opacity(), "value")
        controls = widgets.HBox([self.words, widgets.VBox([self.layers, self.heads, self.opacity])])
        super().__init__([widgets.HBox([self.play, self.step]), controls, self.figure, _page_helper()])
        self.add_class("diffviz-explorer")

    # ---- drawing --------------------------------------------------------------------------------------
    def _picture(self, of: str, step: int) -> str:
        """PNG data URI of the preview of ``of`` ("x0" or "latents") at ``step``, cached."""
        key = (of, step)
        if key not in self._pictures:
            self._pictures[key] = d.preview_uri(self.trace, step, of, fast=True)
        return self._pictures[key]

    def _build_figure(self) -> go.FigureWidget:
        tr = self.trace
        fig = make_subplots(rows=2, cols=3, row_heights=[0.62, 0.38], vertical_spacing=0.12,
                            horizontal_spacing=0.04, specs=[[{}, {}, {}], [{"colspan": 3}, None, None]],
                            subplot_titles=["predicted x0", "noisy latent (U-Net input)", "heat map", ""])
        fig.add_trace(d.image_trace(tr, self._picture("x0", 0), "predicted x0"), row=1, col=1)
        fig.add_trace(d.image_trace(tr, self._picture("latents", 0), "noisy latent"), row=1, col=2)
        fig.add_trace(d.image_trace(tr, d.png_uri(d.final_image(tr)), "final image"), row=1, col=3)
        heat = d.heat_trace(tr, self._blank(), opacity=self.opacity.value, showscale=True)
        fig.add_trace(heat, row=1, col=3)
        for c in (1, 2, 3):
            d.image_axes(fig, tr, 1, c)
        for label, ys in zip(d.word_labels(tr), heatmap.word_share(tr).T.tolist()):
            fig.add_trace(go.Scatter(x=list(range(tr.num_steps)), y=ys, name=label, mode="lines",
                                     hovertemplate=f"{label}: %{{y:.1f}}%<extra>step %{{x}}</extra>"),
                          row=2, col=1)
        fig.update_xaxes(title_text="step (noisy → clean)", range=[-0.5, tr.num_steps - 0.5],
                         dtick=d.step_tick(tr), row=2, col=1)
        fig.update_yaxes(title_text="% of word attention", rangemode="tozero", row=2, col=1)
        fig.add_vline(x=0, line=dict(color="black", dash="dot", width=1), row=2, col=1)
        fig.data[HEAT].colorbar.update(len=0.55, y=0.78)
        # autosize: as wide as the notebook cell
        fig.update_layout(autosize=True, height=660, margin=dict(t=90, l=60, r=20, b=40),
                          legend=dict(y=0.2, yanchor="middle"), title=tr.prompt)
        try:
            return go.FigureWidget(fig)
        except ImportError as err:  # plotly's FigureWidget is an anywidget
            raise ImportError("diffviz.explore needs anywidget (plotly's FigureWidget is built on it): "
                              "pip install 'diffviz[notebooks]', or pip install anywidget.") from err

    def _select(self) -> None:
        """Recompute the heat maps of the current words / layers / heads for every step."""
        words = list(self.words.value)
        if words:
            self._maps = d.step_maps(self.trace, words, layers=self._layers, heads=self._heads)
            self._zmax = float(self._maps.max()) or 1.0
        else:
            self._maps = None

    def _show_step(self) -> None:
        s, fig, tr = self.step.value, self.figure, self.trace
        with fig.batch_update():
            fig.data[X0].source = self._picture("x0", s)
            fig.data[NOISY].source = self._picture("latents", s)
            self._draw_heat()
            fig.layout.shapes[0].update(x0=s, x1=s)
            fig.layout.annotations[0].text = f"predicted x0, {d.step_label(tr, s)}"

    def _draw_heat(self) -> None:
        heat, ann = self.figure.data[HEAT], self.figure.layout.annotations[2]
        if self._maps is None:
            heat.z = self._blank()
            ann.text = "pick a word"
            return
        heat.z = self._maps[self.step.value].numpy()
        heat.zmax = self._zmax
        where = "" if self._layers is None else f", {self.layers.label}"
        head = "" if self._heads is None else f", head {self._heads}"
        ann.text = f"{d.words_title(self.trace, list(self.words.value))}{where}{head}"

    def _draw_lines(self) -> None:
        """Picked words' lines bold. One restyle with a value for every line: plotly.js's widget model
        applies a batched restyle to its copy of the figure with ``undefined`` wherever a trace of the
        batch has no value (the heat map's opacity was lost that way), and draws from that copy."""
        picked = set(self.words.value)
        n = len(self.figure.data) - LINES
        self.figure.plotly_restyle({"line.width": [3 if w in picked else 1 for w in range(n)],
                                    "opacity": [1.0 if w in picked else 0.35 for w in range(n)]},
                                   list(range(LINES, LINES + n)))

    def _blank(self) -> list[list[float]]:
        """[h, w] zeros on the attention grid: the heat map when no word is picked."""
        h, w = heatmap.grid(self.trace)
        return [[0.0] * w] * h

    # ---- events ------------------------------------------------------------------------------------------
    @d.one_thread
    def _on_step(self) -> None:
        self._show_step()

    @d.one_thread
    def _on_selection(self) -> None:
        self._select()
        with self.figure.batch_update():
            self._draw_heat()
        self._draw_lines()

    def _on_layers(self) -> None:
        self._quiet = True
        try:
            self._update_head_options()
        finally:
            self._quiet = False
        self._on_selection()

    def _on_opacity(self) -> None:
        self.figure.data[HEAT].opacity = self.opacity.value

    def _update_head_options(self) -> None:
        """Heads to pick: those every selected layer has; none when only the head mean was captured."""
        if not self.trace.options.get("heads"):
            self.heads.options, self.heads.disabled = [("mean of heads (captured)", MEAN)], True
            return
        n = min(self.trace.attn[name].shape[1] for name in self.trace.layer_names(self._layers))
        keep = self.heads.value if self.heads.value < n else MEAN
        self.heads.options = [("mean of heads", MEAN)] + [(f"head {h}", h) for h in range(n)]
        self.heads.value = keep

    @property
    def _layers(self) -> str | None:
        return None if self.layers.value == ALL else self.layers.value

    @property
    def _heads(self) -> int | None:
        return None if self.heads.value == MEAN else self.heads.value


# Runs in the page, in a hidden widget of the explorer. plotly's widget (an anywidget) draws its
# figure before the notebook has laid out the output, so plotly falls back to 700 px, and nothing
# resizes it later: when a figure's width differs from its box, resize it (window.Plotly is set by
# plotly's widget bundle).
_PAGE_JS = """
function fit(box) {
  for (const gd of box.querySelectorAll(".js-plotly-plot")) {
    const room = gd.getBoundingClientRect().width;
    if (window.Plotly && gd._fullLayout && room > 0 && Math.abs(gd._fullLayout.width - room) > 1) {
      window.Plotly.Plots.resize(gd);
    }
  }
}
export default {
  render({ el }) {
    el.style.display = "none";
    let box = null;
    const check = () => requestAnimationFrame(() => {
      box = box || el.closest(".diffviz-explorer");
      if (box) fit(box);
    });
    const watch = new ResizeObserver(check);
    requestAnimationFrame(() => {
      box = el.closest(".diffviz-explorer");
      if (box) watch.observe(box);
      check();
    });
    document.addEventListener("plotlywidget-after-render", check);
    return () => { watch.disconnect(); document.removeEventListener("plotlywidget-after-render", check); };
  },
};
"""


@functools.cache
def _page_helper_class() -> type:
    import anywidget  # plotly's FigureWidget needs it too

    return type("ExplorerPage", (anywidget.AnyWidget,), {"_esm": _PAGE_JS})


def _page_helper() -> widgets.DOMWidget:
    """A hidden widget whose script keeps the explorer's figure as wide as its box."""
    return _page_helper_class()()


def explore(trace: Trace, words: Sequence[str | int] | None = None, *, opacity: float = 0.6) -> Explorer:
    """An interactive explorer of ``trace`` for a notebook: step slider with play, word picker
    (several at once: their heat maps are summed), layer filter (block, resolution or one layer),
    head picker (when heads were captured) and overlay opacity. ``words``: words (text or index)
    picked at the start; default the one with the most attention."""
    return Explorer(trace, words, opacity=opacity)


def _word_ids(trace: Trace, words: Sequence[str | int]) -> list[int]:
    out: list[int] = []
    for w in [words] if isinstance(words, (str, int)) else words:
        out += [i for i in trace.word_indices(w) if i not in out]
    return out


def _layer_options(trace: Trace) -> list[tuple[str, str]]:
    """("all layers", ALL), then blocks, resolutions and single layers, as ``Trace.layer_names``
    takes them."""
    layers = [trace.layers[i] for i in d.unet_order(trace)]
    blocks = [b for b in ("down", "mid", "up") if any(l.name.startswith(b) for l in layers)]
    sizes = sorted({l.resolution for l in layers}, key=lambda r: -int(r.split("x")[0]))
    return ([("all layers", ALL)] + [(f"{b} blocks", b) for b in blocks] + [(f"{r} maps", r) for r in sizes]
            + [(f"{d.layer_label(l.name)} ({l.resolution})", l.name) for l in layers])
