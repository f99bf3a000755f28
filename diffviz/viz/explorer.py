"""``explore(trace)``: an ipywidgets app to step through a generation and ask where each word looks.

Every control redraws from data already in the trace (no model call): pictures are the fast
linear preview, PNG-encoded once per step when the app is built; the heat maps of the current
word, layer and head selection are computed for all steps at once, so moving the step slider only
swaps arrays; play sends every step of the selection to the page once and the page draws them
(a hidden companion widget, which also keeps the figure as wide as its cell). ``explore(a,
compare=b)`` shows two traces (two prompts, seeds, or a run with and without an edit) row above
row on one step slider.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.basedatatypes import Undefined
from plotly.subplots import make_subplots

from .. import heatmap
from ..extras import install_hint
from ..traces import Trace
from . import _draw as d
from . import pictures

try:
    import anywidget  # plotly's FigureWidget is an anywidget
    import ipywidgets as widgets
except ImportError as err:
    raise ImportError(f"the diffviz explorer needs {err.name}, which is not installed: "
                      f"{install_hint('notebooks')}") from None

# traces of one row of panels, in figure order: a row holds PER_ROW traces
X0, NOISY, FINAL, UNDER, HEAT = range(5)
PER_ROW = 5
ALL, MEAN = "all", -1  # dropdown values for "no layer filter" and "mean of heads" (None means "no selection")
FIXED, FIT = "fixed", "fit"  # colour scales: one for every word, or fitted to the picked words
TITLES = ("guess of the final image (x0)", "noisy input", "final image")
CAPTIONS = ("the model's guess of the final image", "the noisy input at this step",
            "the image the run ended with", "where the word's information went")
SCALE_TITLE = "share of a<br>pixel's attention"
ACCENT, GREY = "#111111", "#b0b0b0"  # lines of picked words, and of the others
COLOUR_WORDS = {"red": "#d62728", "green": "#2ca02c", "blue": "#1f5fd6", "yellow": "#d4b000",
                "purple": "#8e44ad", "orange": "#f28e1c", "pink": "#e377c2", "brown": "#8c564b",
                "black": "#000000", "white": "#c9c9c9", "grey": "#7f7f7f", "gray": "#7f7f7f",
                "cyan": "#17becf", "magenta": "#d62ad6"}
PLAY_MS = 100  # a step's time on screen while playing (the page plays, no kernel round trip)
HINT = "diffviz explorer (an ipywidgets app): run the cell, with a kernel, to explore."


class Explorer(widgets.VBox):
    """The explorer app: controls above one plotly ``FigureWidget`` (``.figure``).

    Each row (one per trace): the predicted x0 and the noisy input at the step, the final image on
    its own, and the picked words' heat map at that step over the final image. Below: each word's
    share of the attention per step (for the layer filter), picked words marked, the step marked.
    """

    @d.one_thread
    def __init__(self, trace: Trace, words: Sequence[str | int] | None = None, *, opacity: float = 0.6,
                 scale: str = FIXED, compare: Trace | None = None):
        self.traces = [trace] if compare is None else [trace, compare]
        for t in self.traces:
            if t.num_steps == 0:
                raise ValueError("this trace is empty: nothing was generated inside its "
                                 "`with diffviz.trace(pipe)` block.")
        if compare is not None and compare.num_steps != trace.num_steps:
            raise ValueError(f"compare needs two traces with as many steps: {trace.num_steps} and "
                             f"{compare.num_steps}. Trace both with the same num_inference_steps.")
        if compare is not None and [l.name for l in compare.layers] != [l.name for l in trace.layers]:
            raise ValueError("compare needs two traces of the same layers (one model, captured with the same "
                             "layers=): these two hold different ones.")
        if scale not in (FIXED, FIT):
            raise ValueError(f"scale must be {FIXED!r} (one colour scale for every word) or {FIT!r} "
                             f"(fitted to the picked words), not {scale!r}.")
        # a video: the rows show one latent frame at a time (trace.frame(k)), picked by the frame slider
        self.video = trace if trace.is_video else None
        if self.video is not None:
            if compare is not None:
                raise ValueError("compare= takes two image traces; explore a video alone and move its frame "
                                 "slider, or compare two of its frames: "
                                 "explore(v.frame(0), compare=v.frame(2)).")
            self.traces = [trace.frame(trace.num_frames // 2)]
        self.trace = trace = self.traces[0]
        self._encoded: dict[int, dict] = {}  # a video's pictures per latent frame, encoded on first view
        self._pictures = self._encode()
        self._maps: list[torch.Tensor | None] = [None] * len(self.traces)  # [step, h, w] per row
        self._zmax = 1.0
        self._strongest: dict[tuple, float] = {}  # colour scale of FIXED, per layer and head selection
        self._mass = [_layer_word_mass(t) for t in self.traces]  # [layer, step, word] per row
        labels = d.word_labels(trace)
        picked = [d.default_word(trace)] if words is None else _word_ids(trace, words)

        n = trace.num_steps
        self.step = widgets.IntSlider(0, 0, n - 1, description="step", continuous_update=True,
                                      layout=widgets.Layout(width="420px"),
                                      tooltip=f"denoising step, 0 (pure noise) to {n - 1} (the last)")
        frames = 0 if self.video is None else self.video.num_frames
        self.frame = widgets.IntSlider(frames // 2, 0, max(frames - 1, 0), description="frame",
                                       continuous_update=False, layout=widgets.Layout(width="300px"),
                                       tooltip=f"latent frame of the video, 0 to {frames - 1}")
        if self.video is None:
            self.frame.layout.display = "none"
        self.play = widgets.ToggleButton(False, description="▶ play", layout=widgets.Layout(width="90px"),
                                         tooltip="play the steps in the page, from this one (from 0 at the "
                                                 "end); click again to pause")
        self._page = _page_helper()  # plays the steps in the page, without a round trip per step
        self.words = widgets.SelectMultiple(
            options=[(label, i) for i, label in enumerate(labels)], value=tuple(picked), rows=len(labels),
            description="words", tooltip="click a word; Ctrl-click (⌘-click on a Mac) to add or remove "
                                         "words: their maps add up")
        self.layers = widgets.Dropdown(options=_layer_options(trace), value=ALL, description="layers",
                                       tooltip="average the heat map (and the lines) over these layers")
        self.heads = widgets.Dropdown(options=[("mean of heads", MEAN)], value=MEAN, description="head",
                                      tooltip="one attention head of the layers, or their mean")
        self._quiet = False  # set while the head options are rebuilt, so the heat maps are computed once
        self.opacity = widgets.FloatSlider(opacity, min=0, max=1, step=0.05, description="opacity",
                                           continuous_update=True,
                                           tooltip="how much the heat map covers the final image under it")
        self.scale = widgets.ToggleButtons(
            options=[("same for all words", FIXED), ("fit to picked words", FIT)], value=scale,
            description="colours", style={"button_width": "150px"},
            tooltip="how heat-map colours are scaled (the colour bar shows the values)",
            tooltips=[("one colour scale for every word and step (the strongest word at its strongest step "
                       "is brightest): compare words"),
                      ("the colour scale ends at the picked words' strongest value: see the shape of a "
                       "weak word")])
        self.layer_hover = widgets.HTML()  # the module path of a single layer
        self._update_head_options()
        if not trace.options.get("heads") or (compare is not None and not compare.options.get("heads")):
            self.heads.layout.display = "none"  # only the head mean was captured: nothing to pick

        self.figure = self._build_figure()
        self._select()
        self._redraw(lines_y=True)
        self.step.observe(lambda _: self._on_step(), "value")
        self.frame.observe(lambda _: self._on_frame(), "value")
        self.words.observe(lambda _: self._on_selection(), "value")
        self.heads.observe(lambda _: self._quiet or self._on_selection(), "value")
        self.layers.observe(lambda _: self._on_layers(), "value")
        self.scale.observe(lambda _: self._on_selection(), "value")
        self.opacity.observe(lambda _: self._on_opacity(), "value")
        hint = widgets.HTML("<small>Ctrl-click (⌘ on a Mac) picks several words</small>")
        controls = widgets.HBox([widgets.VBox([self.words, hint]),
                                 widgets.VBox([self.layers, self.layer_hover, self.heads, self.opacity,
                                               self.scale])])
        self.play.observe(lambda _: self._on_play(), "value")
        self._page.observe(lambda _: self._on_page_step(), "step")
        self._page.observe(lambda _: self._on_page_playing(), "playing")
        top = widgets.HBox([self.play, self.step, self.frame])
        super().__init__([top, controls, self.figure, self._page])
        self.add_class("diffviz-explorer")

    # ---- drawing --------------------------------------------------------------------------------------
    def _build_figure(self) -> go.FigureWidget:
        rows = len(self.traces)
        # heights that make a row of four square panels about as tall as a ~970 px cell makes them wide
        heights = [0.56, 0.44] if rows == 1 else [0.35, 0.35, 0.3]
        fig = make_subplots(rows=rows + 1, cols=4, row_heights=heights,
                            vertical_spacing=0.12 if rows == 1 else 0.08, horizontal_spacing=0.025,
                            specs=[[{}] * 4] * rows + [[{"colspan": 4}, None, None, None]])
        for r, tr in enumerate(self.traces):
            final = d.png_uri(d.final_image(tr))
            for c, (uri, name) in enumerate([(self._pictures[r, "x0", 0], "x0"),
                                             (self._pictures[r, "latents", 0], "noisy input"),
                                             (final, "final image"), (final, "final image")]):
                fig.add_trace(d.image_trace(tr, uri, name).update(zsmooth="fast"), row=r + 1, col=c + 1)
                d.image_axes(fig, tr, r + 1, c + 1)
            heat = d.heat_trace(tr, self._blank(tr), opacity=self.opacity.value, showscale=r == 0)
            fig.add_trace(heat, row=r + 1, col=4)
        for r, tr in enumerate(self.traces):
            suffix = "" if rows == 1 else " (B)" if r else " (A)"
            for label, word in zip(d.word_labels(tr), tr.words):
                fig.add_trace(go.Scatter(
                    x=list(range(tr.num_steps)), y=[0] * tr.num_steps, name=label + suffix, mode="lines",
                    line={"color": GREY, "dash": "dash" if r else "solid"}, legendgroup=str(r),
                    hovertemplate=f"{label}{suffix}: %{{y:.1f}}%<extra>step %{{x}}</extra>"),
                    row=rows + 1, col=1)
        n = self.trace.num_steps
        fig.update_xaxes(title_text="step (noisy → clean)", range=[-0.5, n - 0.5],
                         dtick=d.step_tick(self.trace), row=rows + 1, col=1)
        fig.update_yaxes(title_text="% of the words' attention", rangemode="tozero", row=rows + 1, col=1)
        fig.add_vline(x=0, line={"color": "black", "dash": "dot", "width": 1}, row=rows + 1, col=1)
        # one colour bar beside the heat maps, titled with what the colour measures
        top = fig.get_subplot(1, 4).yaxis.domain[1]
        bottom = fig.get_subplot(rows, 4).yaxis.domain[0]
        fig.data[HEAT].colorbar.update(len=top - bottom, y=(top + bottom) / 2, yanchor="middle",
                                       thickness=14, title={"text": SCALE_TITLE, "side": "right"})
        # a title above and a one-line caption under each panel; in a comparison, each row's prompt
        self._titles: dict[tuple[int, int], int] = {}
        for r, tr in enumerate(self.traces):
            for c in range(4):
                ax = fig.get_subplot(r + 1, c + 1)
                on = {"xref": f"{ax.yaxis.anchor} domain", "yref": f"{ax.xaxis.anchor} domain"}  # x3, y3
                self._titles[r, c] = len(fig.layout.annotations)
                fig.add_annotation(text=TITLES[c] if c < 3 else "", x=0.5, y=1.0, yanchor="bottom",
                                   showarrow=False, font={"size": 13}, **on)
                fig.add_annotation(text=CAPTIONS[c], x=0.5, y=0.0, yanchor="top", showarrow=False,
                                   font={"size": 11, "color": "#555"}, **on)
            if rows > 1:
                ax = fig.get_subplot(r + 1, 1)
                fig.add_annotation(text=f"<b>{'AB'[r]}</b>: “{tr.prompt}”, {_run_words(tr)}",
                                   xref="paper", yref=f"{ax.xaxis.anchor} domain", x=0, y=1.13,
                                   xanchor="left", yanchor="bottom", showarrow=False, font={"size": 13})
        self._lines_title = len(fig.layout.annotations)
        ax = fig.get_subplot(rows + 1, 1)
        fig.add_annotation(text="", xref="paper", yref=f"{ax.xaxis.anchor} domain", x=0, y=1.02,
                           xanchor="left", yanchor="bottom", showarrow=False, font={"size": 13})
        # autosize: as wide as the notebook cell (the page helper keeps it so)
        fig.update_layout(autosize=True, height=590 if rows == 1 else 880,
                          margin={"t": 70 if rows == 1 else 90, "l": 50, "r": 30, "b": 40},
                          legend={"y": 0.19 if rows == 1 else 0.13, "yanchor": "middle"},
                          title={"text": "", "x": 0, "xanchor": "left", "font": {"size": 15}})
        return go.FigureWidget(fig)

    def _select(self) -> None:
        """Recompute the heat maps of the current words / layers / heads for every step, every row."""
        for r, tr in enumerate(self.traces):
            words = self._row_words(r)
            self._maps[r] = d.step_maps(tr, words, layers=self._layers, heads=self._heads) if words else None
        if self.scale.value == FIXED:
            self._zmax = self._strongest_word()
        else:
            self._zmax = max((float(m.max()) for m in self._maps if m is not None), default=1.0) or 1.0

    def _update_figure(self, traces: dict[int, dict], layout: dict) -> None:
        """One update of the figure (one redraw in the page): ``traces`` {trace index: {property:
        value}}, ``layout`` {property path: value}. A trace may leave out only a property it does not
        have: plotly.js's widget model writes ``undefined`` into its copy of the figure for a trace an
        update has no value for, and draws from that copy whenever the output is shown (the heat map's
        opacity was lost that way when a batch also set the lines' opacity)."""
        idx = sorted(traces)
        props = sorted({p for t in traces.values() for p in t})
        self.figure.plotly_update({p: [traces[i].get(p, Undefined) for i in idx] for p in props}, layout, idx)

    def _show_step(self) -> None:
        s = self.step.value
        traces, layout = self._heat(z_only=True)
        for r in range(len(self.traces)):
            traces[r * PER_ROW + X0] = {"source": self._pictures[r, "x0", s]}
            traces[r * PER_ROW + NOISY] = {"source": self._pictures[r, "latents", s]}
        self._update_figure(traces, {**layout, "shapes[0].x0": s, "shapes[0].x1": s,
                                     "title.text": self._title(s)})

    def _title(self, s: int) -> str:
        tr = self.trace
        where = "" if len(self.traces) > 1 else f"“{tr.prompt}”, {_run_words(tr)} · "
        return f"{where}step {s} of {tr.num_steps - 1} (t={float(tr.timesteps[s]):g})"

    def _heat(self, z_only: bool = False) -> tuple[dict, dict]:
        """Updates of the heat maps at the current step: z (and, unless ``z_only``, scale, colour bar,
        opacity and titles) of every row."""
        s, traces, layout = self.step.value, {}, {}
        where = "all layers" if self._layers is None else self.layers.label
        head = "" if self._heads is None else f", head {self._heads}"
        picked = d.words_title(self.trace, list(self.words.value))
        for r, maps in enumerate(self._maps):
            z = self._blank(self.traces[r]) if maps is None else maps[s].numpy()
            traces[r * PER_ROW + HEAT] = {"z": z} if z_only else {
                "z": z, "zmax": self._zmax, "opacity": self.opacity.value,
                "showscale": r == 0 and any(m is not None for m in self._maps)}  # no words: no colour bar
            if maps is not None:
                layout[f"annotations[{self._titles[r, 3]}].text"] = f"{picked}, {where}{head}"
            else:
                layout[f"annotations[{self._titles[r, 3]}].text"] = (
                    f"{picked}: not in this prompt" if r and self.words.value else "pick a word")
        return traces, layout

    def _lines(self, y: bool = True) -> tuple[dict, dict]:
        """Updates of the word lines: each word's share of attention per step over the layer filter
        (``y``: only when the filter changed), picked words in the accent colour, colour words in their
        colour, the rest grey; and the chart's title."""
        layers = self.trace.layer_names(self._layers)
        traces, i = {}, len(self.traces) * PER_ROW
        for r, tr in enumerate(self.traces):
            idx = [k for k, l in enumerate(tr.layers) if l.name in layers] or list(range(len(tr.layers)))
            mass = self._mass[r][idx].mean(0)  # [step, word]
            share = 100 * mass / mass.sum(1, keepdim=True).clamp_min(1e-12)
            picked = set(self._row_words(r))
            for w, word in enumerate(tr.words):
                own = COLOUR_WORDS.get(word.lower())
                traces[i] = {"line.color": own or (ACCENT if w in picked else GREY),
                             "line.width": 3.5 if w in picked else 1.5,
                             "opacity": 1.0 if w in picked or own is None else 0.45}
                if y:
                    traces[i]["y"] = share[:, w].tolist()
                i += 1
        what = "all layers" if self._layers is None else self.layers.label
        return traces, {f"annotations[{self._lines_title}].text": f"each word's share of attention, {what}"}

    def _blank(self, trace: Trace) -> list[list[float]]:
        """[h, w] zeros on the attention grid: the heat map when no word is picked."""
        h, w = d.heat_size(trace)
        return [[0.0] * w] * h

    def _row_words(self, r: int) -> list[int]:
        """The picked words as indices into row ``r``'s trace: the same words (text and occurrence)."""
        picked = list(self.words.value)
        if r == 0:
            return picked
        out = []
        for w in picked:
            text = self.trace.words[w].lower()
            nth = [i for i, x in enumerate(self.trace.words) if x.lower() == text].index(w)
            there = [i for i, x in enumerate(self.traces[r].words) if x.lower() == text]
            out += there[nth: nth + 1]
        return out

    def _strongest_word(self) -> float:
        """Colour scale of FIXED: the largest value any single word reaches at any step, for the
        current layers and heads (over every row), so one colour means one attention share."""
        key = (self._layers, self._heads)
        if key not in self._strongest:
            self._strongest[key] = max(_word_peak(t, self._layers, self._heads) for t in self.traces) or 1.0
        return self._strongest[key]

    # ---- in a notebook ------------------------------------------------------------------------------------
    def _ipython_display_(self) -> None:
        """A still of the current frame with a one-line hint, then the app. A notebook saved with
        its outputs and opened without a kernel has no app to show ("Error displaying widget: model
        not found"): the still shows there instead; with the app alive, the page helper hides it."""
        from IPython.display import display

        display(self.still(), raw=True)
        display({**self._repr_mimebundle_(), "text/plain": HINT}, raw=True)

    def still(self) -> dict[str, str]:
        """{"text/html", "image/png", "text/plain"}: a PNG of the current frame (one row of x0, noisy
        input, final image and the heat map over it per trace) under a one-line hint."""
        rows = []
        for r, tr in enumerate(self.traces):
            s, image = self.step.value, d.final_image(tr).numpy()
            z = torch.zeros(1, 1) if self._maps[r] is None else self._maps[r][s] / self._zmax
            heat = pictures.colorize(heatmap.upsample(z, (tr.height, tr.width)).clamp(0, 1))
            over = (1 - self.opacity.value) * image + self.opacity.value * heat
            rows.append(pictures.strip([tr.preview(s), tr.preview(s, of="latents"), image,
                                        over.round().astype(np.uint8)], scale=max(1, 160 // tr.width)))
        height = sum(r.height for r in rows) + 4 * (len(rows) - 1)
        still = np.full((height, max(r.width for r in rows), 3), 255, np.uint8)
        y = 0
        for row in rows:
            still[y: y + row.height, : row.width] = np.asarray(row)
            y += row.height + 4
        uri = d.png_uri(still, max_side=2048)
        words = d.words_title(self.trace, list(self.words.value)) or "no word"
        caption = (f"diffviz explorer, step {self.step.value}: x0, noisy input, final image, {words} over "
                   "it. A still picture: run the cell to explore.")
        return {"text/html": f"<p>{caption}</p><img alt='diffviz explorer (still)' src='{uri}'>",
                "image/png": uri.split(",", 1)[1], "text/plain": caption}

    # ---- events ------------------------------------------------------------------------------------------
    @d.one_thread
    def _on_step(self) -> None:
        if not self._page.playing:  # while the page plays, it draws the steps itself
            self._show_step()

    @d.one_thread
    def _on_frame(self) -> None:
        """Another latent frame of the video: its pictures, final frame, lines and heat maps."""
        self.traces = [self.video.frame(self.frame.value)]
        self.trace = self.traces[0]
        self._pictures = self._encode()
        self._mass = [_layer_word_mass(self.trace)]
        self._strongest = {}
        final = d.png_uri(d.final_image(self.trace))
        self._update_figure({FINAL: {"source": final}, UNDER: {"source": final}}, {})
        self._on_selection(lines_y=True)

    def _encode(self) -> dict[tuple[int, str, int], str]:
        """The x0 and noisy-input pictures of every row and step, PNG-encoded once (per frame of a video)."""
        frame = self.trace.options.get("frame", -1)
        if frame in self._encoded:
            return self._encoded[frame]
        self._encoded[frame] = {(r, of, s): d.preview_uri(t, s, of, fast=True)
                                for r, t in enumerate(self.traces)
                                for of in ("x0", "latents") for s in range(t.num_steps)}
        return self._encoded[frame]

    def _on_play(self) -> None:
        self.play.description = "❚❚ pause" if self.play.value else "▶ play"
        if self.play.value and not self._page.playing:
            self._page.frames = self.frames()
            self._page.step = self.step.value
            self._page.playing = True
        elif not self.play.value:
            self._page.playing = False

    def _on_page_step(self) -> None:
        self.step.value = self._page.step  # the slider follows the page's animation

    @d.one_thread
    def _on_page_playing(self) -> None:
        if not self._page.playing:  # it stopped: at the end, or paused
            self.play.value = False
            self._show_step()  # the figure holds what the page drew; this only syncs stragglers

    def frames(self) -> dict:
        """Everything the page needs to play the steps of the current selection without asking
        the kernel: per step, the x0 and noisy-input pictures and the heat maps of every row, the
        title; and which figure traces take them."""
        rows, n = range(len(self.traces)), self.trace.num_steps
        images = [r * PER_ROW + k for r in rows for k in (X0, NOISY)]
        z = [None if m is None else np.round(m.numpy(), 5) for m in self._maps]
        steps = []
        for s in range(n):
            steps.append({
                "sources": [self._pictures[r, of, s] for r in rows for of in ("x0", "latents")],
                "z": [self._blank(self.traces[r]) if z[r] is None else z[r][s].tolist() for r in rows],
                "title": self._title(s)})
        return {"images": images, "heat": [r * PER_ROW + HEAT for r in rows], "steps": steps}

    @d.one_thread
    def _on_selection(self, lines_y: bool = False) -> None:
        self._select()
        self._redraw(lines_y)

    def _redraw(self, lines_y: bool) -> None:
        """The figure for the current selection, at the current step: one update."""
        heat, heat_layout = self._heat()
        lines, lines_layout = self._lines(y=lines_y)
        s = self.step.value
        traces = {**heat, **lines}
        for r in range(len(self.traces)):
            traces[r * PER_ROW + X0] = {"source": self._pictures[r, "x0", s]}
            traces[r * PER_ROW + NOISY] = {"source": self._pictures[r, "latents", s]}
        self._update_figure(traces, {**heat_layout, **lines_layout, "shapes[0].x0": s, "shapes[0].x1": s,
                            "title.text": self._title(s)})

    def _on_layers(self) -> None:
        self._quiet = True
        try:
            self._update_head_options()
        finally:
            self._quiet = False
        names = self.trace.layer_names(self._layers)
        self.layer_hover.value = (f"<small title='{names[0]}'>module {names[0]}</small>" if len(names) == 1
                                  else "")
        self._on_selection(lines_y=True)

    def _on_opacity(self) -> None:
        rows = range(len(self.traces))
        self._update_figure({r * PER_ROW + HEAT: {"opacity": self.opacity.value} for r in rows}, {})

    def _update_head_options(self) -> None:
        """Heads to pick: those every selected layer has (of every row); none when only the head mean
        was captured."""
        if not all(t.options.get("heads") for t in self.traces):
            self.heads.options = [("mean of heads", MEAN)]
            return
        n = min(t.attn[name].shape[1] for t in self.traces for name in t.layer_names(self._layers))
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
# plotly's widget bundle). And it hides the still picture shown above a live app.
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
  render({ model, el }) {
    el.style.display = "none";
    // the still picture shown just before the app is for saved notebooks: hide it while the app is alive
    // (render may run before the app is in the page: try again at each check)
    const hideStill = () => {
      const output = el.closest(".jp-OutputArea-child, .output_area");
      const still = output && output.previousElementSibling;
      if (still && still.querySelector("img[alt^='diffviz explorer']")) still.style.display = "none";
    };
    let box = null;
    const check = () => requestAnimationFrame(() => {
      hideStill();
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
    // play: draw each step from the frames the kernel sent, with plotly.js, here; tell the kernel the
    // step (the slider follows) and when it stops
    let timer = null;
    const stop = () => { if (timer !== null) { clearInterval(timer); timer = null; } };
    const play = () => {
      stop();
      const f = model.get("frames");
      box = box || el.closest(".diffviz-explorer");
      const gd = box && box.querySelector(".js-plotly-plot");
      if (!f || !f.steps || !gd || !window.Plotly) {
        model.set("playing", false);
        model.save_changes();
        return;
      }
      let s = model.get("step");
      if (s >= f.steps.length - 1) s = 0;
      // one redraw a step: images take sources, heat maps z (undefined: leave as is); not reported to the
      // kernel's figure (which the kernel brings up to date when play stops)
      const none = (k) => Array(k).fill(undefined);
      const show = () => {
        const frame = f.steps[s];
        window.Plotly.update(
          gd,
          { source: frame.sources.concat(none(f.heat.length)), z: none(f.images.length).concat(frame.z),
            _doNotReportToPy: true },
          { "title.text": frame.title, "shapes[0].x0": s, "shapes[0].x1": s },
          f.images.concat(f.heat));
        model.set("step", s);
        model.save_changes();
      };
      show();
      timer = setInterval(() => {
        if (!model.get("playing") || s >= f.steps.length - 1) {
          stop();
          model.set("playing", false);
          model.save_changes();
          return;
        }
        s += 1;
        show();
      }, model.get("interval"));
    };
    const onPlaying = () => (model.get("playing") ? play() : stop());
    model.on("change:playing", onPlaying);
    return () => {
      stop();
      model.off("change:playing", onPlaying);
      watch.disconnect();
      document.removeEventListener("plotlywidget-after-render", check);
    };
  },
};
"""


@functools.cache
def _page_helper_class() -> type:
    import traitlets

    return type("ExplorerPage", (anywidget.AnyWidget,), {
        "_esm": _PAGE_JS,
        "frames": traitlets.Dict().tag(sync=True),  # Explorer.frames(), sent when play starts
        "playing": traitlets.Bool(False).tag(sync=True),
        "step": traitlets.Int(0).tag(sync=True),
        "interval": traitlets.Int(PLAY_MS).tag(sync=True),  # ms a step is shown
    })


def _page_helper() -> widgets.DOMWidget:
    """A hidden widget whose script keeps the explorer's figure as wide as its box and plays the steps."""
    return _page_helper_class()()


def explore(trace: Trace, words: Sequence[str | int] | None = None, *, opacity: float = 0.6,
            scale: str = FIXED, compare: Trace | None = None) -> Explorer:
    """An interactive explorer of ``trace`` for a notebook: step slider with play, word picker
    (several at once: their heat maps are summed), layer filter (block, resolution or one layer),
    head picker (when heads were captured), overlay opacity and colour scale. ``words``: words (text
    or index) picked at the start; default the one with the most attention. ``scale``: "fixed", one
    colour scale for every word (the strongest word's peak), or "fit", fitted to the picked words.
    ``compare``: a second trace with as many steps (another prompt, seed, or the run with an edit),
    shown below the first on the same step slider, the same words picked by their text. A video trace gets
    a frame slider beside the step slider: the panels show one latent frame at a time."""
    return Explorer(trace, words, opacity=opacity, scale=scale, compare=compare)


def _word_ids(trace: Trace, words: Sequence[str | int]) -> list[int]:
    out: list[int] = []
    for w in [words] if isinstance(words, (str, int)) else words:
        out += [i for i in trace.word_indices(w) if i not in out]
    return out


def _run_words(trace: Trace) -> str:
    """What else tells two runs apart, as far as a trace records it."""
    edit = trace.options.get("edit")
    return f"guidance {trace.guidance_scale:g}" + (f", edited: {edit}" if edit else "")


def _to_words(trace: Trace) -> torch.Tensor:
    """[token, word] 1 where a stored token belongs to a word: summing tokens into words."""
    out = torch.zeros(len(trace.tokens), max(1, len(trace.words)))
    for i, t in enumerate(trace.tokens):
        if t.word is not None:
            out[i, t.word] = 1.0
    return out


def _word_peak(trace: Trace, layers: str | None, heads: int | None) -> float:
    """The largest value any one word's map (as ``step_maps`` draws it) reaches at any step, in one
    pass over the layers instead of one per word."""
    names, to_word = trace.layer_names(layers), _to_words(trace)
    by_size: dict[tuple[int, int], torch.Tensor] = {}
    for name in names:
        a = trace.attn[name]  # [step, head, token, h, w]
        a = (a if heads is None else a[:, [heads]]).float().mean(1)
        m = torch.einsum("sthw,tk->skhw", a, to_word)  # [step, word, h, w]
        key = tuple(m.shape[-2:])
        by_size[key] = by_size[key] + m if key in by_size else m
    total = sum(heatmap.upsample(m, heatmap.grid(trace)) for m in by_size.values())
    return float(total.max()) / len(names)


def _layer_word_mass(trace: Trace) -> torch.Tensor:
    """[layer, step, word] float32: mean attention probability each word receives at each step in each
    layer (over pixels and heads; ``heatmap.word_mass`` is its mean over layers)."""
    to_word = _to_words(trace)
    return torch.stack([trace.attn[l.name].float().mean(dim=(1, 3, 4)) @ to_word for l in trace.layers])


def layer_title(trace: Trace, name: str) -> str:
    """Plain name of a layer, as the model family describes it, and its resolution: "first down block,
    8x8", "first up block (2 of 3), 16x16"."""
    layer = next(l for l in trace.layers if l.name == name)
    return f"{layer.title}, {layer.resolution}"


def _layer_options(trace: Trace) -> list[tuple[str, str]]:
    """("all layers", ALL), then blocks, resolutions and single layers, as ``Trace.layer_names``
    takes them."""
    layers = trace.layers  # in run order
    names = {"down": "down blocks (in)", "mid": "middle block", "up": "up blocks (out)"}  # U-Net blocks
    blocks = list(dict.fromkeys(l.block for l in layers if l.block))
    sizes = sorted({l.resolution for l in layers}, key=lambda r: -int(r.split("x")[0]))
    return ([("all layers", ALL)] + [(names.get(b, f"{b} blocks"), b) for b in blocks]
            + [(f"{r} maps", r) for r in sizes] + [(layer_title(trace, l.name), l.name) for l in layers])
