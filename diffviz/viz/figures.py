"""Figures of a Trace: pure functions Trace -> plotly ``go.Figure``. They never run a model (except
``vae=`` for an exact decode, when given), never call ``show()``, and draw image panels in image
pixel coordinates (x right, y down).

Words are given as text (every occurrence, case-insensitive) or as an index into ``trace.words``;
``layers`` and ``heads`` select as in ``Trace.heatmap``.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .. import heatmap
from ..traces import Trace
from . import _draw as d

Word = str | int


@d.one_thread
def word_heatmap(trace: Trace, word: Word | Sequence[Word], *, steps=None, layers=None, heads=None,
                 opacity: float = 0.6, colorscale: str = d.HEAT_COLORS) -> go.Figure:
    """One word's heat map (several words: their sum) over the final image. Colour: attention
    normalised to [0, 1] over the image; ``opacity`` in [0, 1] of the overlay. A video gets one map per
    latent frame with a frame slider (normalised over the whole video)."""
    _check_opacity(opacity)
    z = trace.heatmap(word, steps=steps, layers=layers, heads=heads, size=d.heat_size(trace))
    title = f"Where {d.words_title(trace, word)} looks, {_selection(trace, steps, layers)}"
    if not trace.is_video:
        fig = go.Figure([d.image_trace(trace, d.png_uri(d.final_image(trace)), "image"),
                         d.heat_trace(trace, z, opacity=opacity, colorscale=colorscale, showscale=True)])
        d.image_axes(fig, trace)
        return fig.update_layout(title=title, width=520, height=480)
    # a video: one map per latent frame (normalised over the whole video), with a frame slider
    pictures = [d.png_uri(d.final_image(trace, k)) for k in range(trace.num_frames)]
    fig = go.Figure([d.image_trace(trace, pictures[0], "frame"),
                     d.heat_trace(trace, z[0], opacity=opacity, colorscale=colorscale, showscale=True)])
    d.image_axes(fig, trace)
    frames = [go.Frame(name=str(k), data=[go.Image(source=pictures[k]), go.Heatmap(z=z[k].numpy())],
                       layout=dict(title_text=f"{title}: {_frame_label(trace, k)}"))
              for k in range(trace.num_frames)]
    fig.update_layout(title=f"{title}: {_frame_label(trace, 0)}", width=560, height=560, margin=dict(b=110))
    return d.animate(fig, frames, prefix="latent frame ")


@d.one_thread
def word_frames(trace: Trace, word: Word | Sequence[Word], *, steps=None, layers=None, heads=None,
                max_frames: int = 8, opacity: float = 0.6, colorscale: str = d.HEAT_COLORS) -> go.Figure:
    """A video's strip: ``word``'s heat map at each latent frame (at most ``max_frames``, evenly spaced),
    over the output frame the latent frame ends on. One colour scale for the whole video (the maps are
    normalised over all its frames), so a frame the word shaped less is darker."""
    if not trace.is_video:
        raise ValueError("word_frames draws a video's frames; for an image use word_heatmap.")
    _check_opacity(opacity)
    n = trace.num_frames
    shown = sorted({round(i * (n - 1) / max(1, min(n, max_frames) - 1)) for i in range(min(n, max_frames))})
    z = trace.heatmap(word, steps=steps, layers=layers, heads=heads, size=d.heat_size(trace))
    fig = make_subplots(rows=1, cols=len(shown), horizontal_spacing=0.01,
                        subplot_titles=[_frame_label(trace, k) for k in shown])
    for i, k in enumerate(shown):
        fig.add_trace(d.image_trace(trace, d.png_uri(d.final_image(trace, k), d.PREVIEW_SIDE), "frame"),
                      row=1, col=i + 1)
        fig.add_trace(d.heat_trace(trace, z[k], opacity=opacity, colorscale=colorscale, showscale=i == 0),
                      row=1, col=i + 1)
        d.image_axes(fig, trace, 1, i + 1)
    fig.update_annotations(font_size=11)
    title = f"Which frames {d.words_title(trace, word)} shaped, {_selection(trace, steps, layers)}"
    return fig.update_layout(title=title, width=max(420, 150 * len(shown) + 80), height=260)


def _frame_label(trace: Trace, k: int) -> str:
    """"frame 2 (video 5-8)": a latent frame and the output frames it decodes to."""
    out = trace.output_frames_of(k)
    return f"frame {k} (video {out[0]}{'' if len(out) == 1 else f'-{out[-1]}'})"


@d.one_thread
def word_grid(trace: Trace, words: Sequence[Word] | None = None, *, cols: int = 4,
              per_page: int | None = None, steps=None, layers=None, heads=None, opacity: float = 0.6,
              colorscale: str = d.HEAT_COLORS) -> go.Figure:
    """A grid of heat maps, one per word, over the image; any number of words.

    Default ``words``: each distinct word of the prompt once, in order; a repeated word ("a" in "a red
    circle left of a blue square") is one panel, "a (2×)", with both occurrences summed, exactly as
    ``trace.word_heatmap("a")``. Give indices into ``trace.words`` for one occurrence ("a (2nd)").
    ``per_page``: show at most this many panels at a time, with a menu of pages (None: all at once).
    """
    _check_opacity(opacity)
    words = _distinct_words(trace) if words is None else list(words)
    if not words:
        raise ValueError("no words to draw; give at least one word of the prompt.")
    if per_page is not None and per_page < 1:
        raise ValueError(f"per_page must be 1 or more, not {per_page}.")
    titles = [_panel_title(trace, w) for w in words]
    page = min(per_page or len(words), len(words))
    cols = max(1, min(cols, page))
    rows = -(-page // cols)
    cell = {1: 320, 2: 300, 3: 230}.get(cols, 170)  # px a panel: few words get large panels
    gap_x, gap_y = 12, 36  # px between panels; the vertical gap holds a panel's title
    width, height = cell * cols + gap_x * (cols - 1) + 120, (cell + gap_y) * rows + 80
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=gap_x / (width - 120),
                        vertical_spacing=gap_y / (height - 80) if rows > 1 else 0,
                        subplot_titles=titles[:page] + [""] * (rows * cols - page))
    uri = d.png_uri(d.final_image(trace), d.PREVIEW_SIDE)  # small panels: a smaller copy of the image
    size = d.heat_size(trace)
    for i, w in enumerate(words):
        r, c = (i % page) // cols + 1, (i % page) % cols + 1
        z = trace.heatmap(w, steps=steps, layers=layers, heads=heads, size=size)
        shown = i < page
        fig.add_trace(d.image_trace(trace, uri, "image").update(visible=shown), row=r, col=c)
        fig.add_trace(d.heat_trace(trace, z, opacity=opacity, colorscale=colorscale, showscale=i == 0,
                                   name=titles[i]).update(visible=shown), row=r, col=c)
    for i in range(min(page, len(words))):
        d.image_axes(fig, trace, i // cols + 1, i % cols + 1)
    fig.update_layout(title=f"Where each word looks, {_selection(trace, steps, layers)}", width=width,
                      height=height)
    if page < len(words):
        _page_menu(fig, titles, page)
    return fig


def _distinct_words(trace: Trace) -> list[str]:
    """Each word of the prompt once (case-insensitive), in order of first appearance."""
    return list(dict.fromkeys(w.lower() for w in trace.words))


def _panel_title(trace: Trace, word: Word) -> str:
    """"red"; "a (2×)" for a word named by text that occurs twice; "a (2nd)" for one occurrence by index."""
    if isinstance(word, int):
        return d.word_labels(trace)[trace.word_indices(word)[0]]
    n = len(trace.word_indices(word))
    return str(word) if n == 1 else f"{word} ({n}×)"


def _page_menu(fig: go.Figure, titles: list[str], page: int) -> None:
    """A menu of pages for a grid whose traces are (image, heat map) per panel, ``page`` panels a page:
    each page shows its panels' traces and titles."""
    n = len(titles)
    title_annotations = list(fig.layout.annotations)[:page]
    buttons = []
    for start in range(0, n, page):
        visible = [start <= i < start + page for i in range(n) for _ in (0, 1)]
        names = titles[start:start + page] + [""] * (page - len(titles[start:start + page]))
        annotations = [a.to_plotly_json() | {"text": t} for a, t in zip(title_annotations, names)]
        buttons.append(dict(label=f"words {start + 1}–{min(start + page, n)} of {n}", method="update",
                            args=[{"visible": visible}, {"annotations": annotations}]))
    fig.update_layout(updatemenus=[dict(type="dropdown", buttons=buttons, x=1, xanchor="right", y=1.0,
                                        yanchor="bottom", pad=dict(b=30), showactive=True)])


@d.one_thread
def denoising(trace: Trace, word: Word | Sequence[Word] | None = None, *, steps=None, layers=None, heads=None,
              vae: torch.nn.Module | None = None, opacity: float = 0.7,
              start: int | None = None) -> go.Figure:
    """Denoising as an animation (one frame per step of ``steps``, default all; slider and play
    button): predicted x0, the noisy latent the U-Net saw at that step, and ``word``'s heat map at
    that step over the final image (default word: the one with the most attention). Pictures are the
    fast linear preview, or the exact VAE decode when ``vae`` is given. Heat maps share one colour
    scale over the steps shown.

    ``start``: the step shown first (the slider can go back to step 0). Default: the first step at
    which signal outweighs noise (sigma <= 1), where predicted x0 starts to look like a picture;
    frames before it say that the guess is still a blur."""
    _check_opacity(opacity)
    word = d.default_word(trace) if word is None else word
    shown = trace.step_indices(steps)
    if start is None:
        start = next((s for s in shown if float(trace.sigma[s]) <= 1), shown[-1])
    elif trace.step_indices(start)[0] not in shown:
        raise ValueError(f"start={start} is not one of the steps shown ({shown}).")
    first = trace.step_indices(start)[0]
    maps = dict(zip(shown, d.step_maps(trace, word, layers=layers, heads=heads)[shown]))
    zmax = max(float(m.max()) for m in maps.values()) or 1.0
    x0 = {s: _picture(trace, s, "x0", vae) for s in shown}
    noisy = {s: _picture(trace, s, "latents", vae) for s in shown}
    heat_title = f"{d.words_title(trace, word)} at this step"
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.03,
                        subplot_titles=["predicted x0", "noisy latent (U-Net input)", heat_title])
    fig.add_trace(d.image_trace(trace, x0[first], "predicted x0"), row=1, col=1)
    fig.add_trace(d.image_trace(trace, noisy[first], "noisy latent"), row=1, col=2)
    fig.add_trace(d.image_trace(trace, d.png_uri(d.final_image(trace)), "final image"), row=1, col=3)
    fig.add_trace(d.heat_trace(trace, maps[first], opacity=opacity, zmax=zmax, showscale=True), row=1, col=3)
    for c in (1, 2, 3):
        d.image_axes(fig, trace, 1, c)
    title = "Denoising, " + ("VAE decode" if vae is not None else "fast preview") + ": {}"

    def label(s: int) -> str:
        blur = " · more noise than signal: the guess is still a blur" if float(trace.sigma[s]) > 1 else ""
        return title.format(d.step_label(trace, s)) + blur

    frames = [go.Frame(name=str(s), traces=[0, 1, 3],
                       data=[go.Image(source=x0[s]), go.Image(source=noisy[s]),
                             go.Heatmap(z=maps[s].numpy())],
                       layout=dict(title_text=label(s)))
              for s in shown]
    fig.update_layout(title=label(first), width=900, height=420, coloraxis_showscale=False,
                      margin=dict(b=110))
    return d.animate(fig, frames, active=shown.index(first))


@d.one_thread
def word_mass(trace: Trace, *, layers=None, share: bool = True) -> go.Figure:
    """Attention mass per word across steps: which words matter early, which late. ``share``: each
    word's percentage of the attention all prompt words receive at that step; else the mean
    attention probability (start and end tokens take the rest)."""
    layers = trace.layer_names(layers)
    mass = heatmap.word_share(trace, layers) if share else heatmap.word_mass(trace, layers)  # [step, word]
    steps = list(range(trace.num_steps))
    t = [float(x) for x in trace.timesteps]
    unit = "% of word attention" if share else "mean attention probability"
    hover = "{}<br>step %{{x}} (t=%{{customdata:g}})<br>%{{y:.3g}}<extra></extra>"
    fig = go.Figure([go.Scatter(x=steps, y=mass[:, w].tolist(), name=label, mode="lines+markers",
                                customdata=t, hovertemplate=hover.format(label))
                     for w, label in enumerate(d.word_labels(trace))])
    _step_axis(fig, trace)
    fig.update_yaxes(title=unit, rangemode="tozero")
    title = "When each word matters: attention per word across steps"
    return fig.update_layout(title=title, width=760, height=420)


@d.one_thread
def layer_step(trace: Trace, word: Word) -> go.Figure:
    """Layer x step matrix of ``word``'s mean attention probability: where in the model (rows in the
    order it runs its layers, e.g. down, mid, up in a U-Net) and when a word acts."""
    z = heatmap.layer_step(trace, word)  # [layer, step], rows in trace.layers order: the run order
    names = [l.name for l in trace.layers]
    labels = [f"{l.title} · {l.resolution}" for l in trace.layers]
    fig = go.Figure(go.Heatmap(z=z.numpy(), x=list(range(trace.num_steps)), y=labels, colorscale="Viridis",
                               customdata=[[n] * trace.num_steps for n in names],
                               colorbar=dict(title="attention"),
                               hovertemplate="%{customdata}<br>step %{x}<br>attention %{z:.3g}"
                                             "<extra></extra>"))
    fig.update_xaxes(title="step (noisy → clean)", dtick=d.step_tick(trace))
    fig.update_yaxes(autorange="reversed")
    return fig.update_layout(title=f"Where in the model, and when, {d.words_title(trace, word)} acts "
                                   "(rows: layers in run order)",
                             width=760, height=180 + 28 * len(labels))


@d.one_thread
def guidance(trace: Trace, *, steps=None, channel: int = 0) -> go.Figure:
    """Classifier-free guidance at each of ``steps`` (default all; animated): unconditional and
    conditional noise predictions, their difference, and the guided prediction
    uncond + scale x (cond - uncond) that the sampler used; one latent ``channel`` each, blue
    negative, red positive."""
    if trace.noise_uncond is None:
        raise ValueError("this trace has no unconditional prediction: it was generated without "
                         "classifier-free guidance (guidance_scale <= 1). Generate with guidance_scale > 1 "
                         "to draw guidance.")
    _check_channel(trace, channel)
    s = trace.guidance_scale
    shown = trace.step_indices(steps)
    uncond, cond = trace.noise_uncond[shown, channel].float(), trace.noise_cond[shown, channel].float()
    guided = trace.noise_guided[shown, channel].float()
    parts = [uncond, cond, cond - uncond, guided]  # each [shown step, h, w]
    titles = ["uncond (empty prompt)", "cond (prompt)", "difference cond − uncond",
              f"guided: uncond + {s:g} × diff"]
    pred_max = max(float(parts[i].abs().max()) for i in (0, 1, 3)) or 1.0
    diff_max = float(parts[2].abs().max()) or 1.0
    fig = make_subplots(rows=1, cols=4, horizontal_spacing=0.02, subplot_titles=titles)
    for i, p in enumerate(parts):
        fig.add_trace(go.Heatmap(z=p[0].numpy(), coloraxis="coloraxis2" if i == 2 else "coloraxis",
                                 hovertemplate="%{z:.3f}<extra></extra>"), row=1, col=i + 1)
        d.pixel_axes(fig, *trace.latents.shape[-2:], 1, i + 1)
    fig.update_layout(
        coloraxis=dict(colorscale=d.SIGNED_COLORS, cmin=-pred_max, cmax=pred_max,
                       colorbar=dict(title="noise", x=1.0, len=0.8)),
        coloraxis2=dict(colorscale="PiYG", cmin=-diff_max, cmax=diff_max,
                        colorbar=dict(title="diff", x=1.08, len=0.8)),
    )
    title = f"Classifier-free guidance (scale {s:g}), channel {channel}: {{}}"
    frames = [go.Frame(name=str(step), traces=[0, 1, 2, 3], data=[go.Heatmap(z=p[k].numpy()) for p in parts],
                       layout=dict(title_text=title.format(d.step_label(trace, step))))
              for k, step in enumerate(shown)]
    fig.update_layout(title=title.format(d.step_label(trace, shown[0])), width=1000, height=380,
                      margin=dict(b=110))
    return d.animate(fig, frames)


@d.one_thread
def schedule(trace: Trace) -> go.Figure:
    """The noise schedule per step: sigma (noise-to-signal ratio, log scale) and alpha-bar (signal
    fraction, 0..1), with each step's timestep in the hover."""
    steps = list(range(trace.num_steps))
    t = [float(x) for x in trace.timesteps]
    fig = make_subplots(rows=1, cols=2,
                        subplot_titles=["sigma (noise / signal)", "alpha-bar (signal fraction)"])
    for col, (name, values) in enumerate([("sigma", trace.sigma), ("alpha-bar", trace.alpha_bar)], start=1):
        fig.add_trace(go.Scatter(x=steps, y=values.tolist(), name=name, mode="lines+markers", customdata=t,
                                 hovertemplate=f"step %{{x}} (t=%{{customdata:g}})<br>{name} %{{y:.3g}}"
                                               "<extra></extra>"), 1, col)
    _step_axis(fig, trace)
    sigma = trace.sigma[trace.sigma > 0]
    decades = float(sigma.max().log10() - sigma.min().log10()) if len(sigma) else 0.0
    # label powers of ten only (no minor "2", "5" labels) when the range spans a decade or more
    fig.update_yaxes(type="log", title="sigma (log scale)", exponentformat="power",
                     **(dict(dtick=1, minor=dict(ticks="outside", showgrid=True)) if decades >= 1 else {}),
                     row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], title="alpha-bar", row=1, col=2)
    name = trace.scheduler.get("name", "scheduler")
    return fig.update_layout(title=f"Noise schedule: {name}, {trace.num_steps} steps", showlegend=False,
                             width=900, height=380)


@d.one_thread
def channels(trace: Trace, step: int = -1, *, of: str = "latents") -> go.Figure:
    """The latent channels at ``step``, one panel each (blue negative, red positive). ``of``:
    "latents" (the U-Net's input at ``step``; ``step = num_steps`` or -1 is the final latent),
    "x0" (predicted clean latent) or "noise" (guided noise prediction)."""
    stores = {"latents": trace.latents, "x0": trace.x0, "noise": trace.noise_guided}
    if of not in stores:
        raise ValueError(f"of must be one of {sorted(stores)}, not {of!r}.")
    store = stores[of]
    if not -len(store) <= step < len(store):
        raise IndexError(f"step {step} is out of range for {of!r}: it has {len(store)} entries "
                         f"(0..{len(store) - 1}).")
    step = step % len(store)
    z = store[step].float()  # [C, h, w]
    zmax = float(z.abs().max()) or 1.0
    fig = make_subplots(rows=1, cols=z.shape[0], horizontal_spacing=0.02,
                        subplot_titles=[f"channel {c}" for c in range(z.shape[0])])
    for c in range(z.shape[0]):
        fig.add_trace(go.Heatmap(z=z[c].numpy(), coloraxis="coloraxis",
                                 hovertemplate="%{z:.3f}<extra></extra>"), row=1, col=c + 1)
        d.pixel_axes(fig, *trace.latents.shape[-2:], 1, c + 1)
    when = "final" if of == "latents" and step == trace.num_steps else (
        d.step_label(trace, step) if step < trace.num_steps else f"step {step}")
    return fig.update_layout(title=f"Latent channels of {of}, {when}",
                             coloraxis=dict(colorscale=d.SIGNED_COLORS, cmin=-zmax, cmax=zmax),
                             width=220 * z.shape[0] + 120, height=320)


@d.one_thread
def compare(a: Trace, b: Trace, word: Word | None = None, *, labels: tuple[str, str] | None = None,
            layers=None) -> go.Figure:
    """Two traces side by side (two prompts, seeds or guidance scales), animated and aligned by step:
    rows A and B, columns predicted x0 and ``word``'s heat map at that step (default: A's strongest
    word). Traces with different step counts are aligned by fraction of the schedule."""
    word = a.words[d.default_word(a)] if word is None else word
    if isinstance(word, int):
        word = a.words[word]
    labels = labels or _difference(a, b)
    n = max(a.num_steps, b.num_steps)
    pick = [[round(k * (t.num_steps - 1) / max(n - 1, 1)) for k in range(n)] for t in (a, b)]
    maps = [d.step_maps(t, word, layers=layers) for t in (a, b)]
    zmax = max(float(m.max()) for m in maps) or 1.0
    x0 = [[d.preview_uri(t, s) for s in range(t.num_steps)] for t in (a, b)]
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.03, vertical_spacing=0.1,
                        subplot_titles=["A: predicted x0", f"A: “{word}” at this step",
                                        "B: predicted x0", f"B: “{word}” at this step"])
    for r, t in enumerate((a, b)):
        fig.add_trace(d.image_trace(t, x0[r][0], "predicted x0"), row=r + 1, col=1)
        fig.add_trace(d.image_trace(t, d.png_uri(d.final_image(t)), "final image"), row=r + 1, col=2)
        fig.add_trace(d.heat_trace(t, maps[r][0], zmax=zmax, showscale=r == 0), row=r + 1, col=2)
        for c in (1, 2):
            d.image_axes(fig, t, r + 1, c)
        fig.update_yaxes(title_text=f"{'AB'[r]}: {_short(labels[r])}", row=r + 1, col=1)
    frames = []
    for k in range(n):
        sa, sb = pick[0][k], pick[1][k]
        frames.append(go.Frame(
            name=str(k), traces=[0, 2, 3, 5],
            data=[go.Image(source=x0[0][sa]), go.Heatmap(z=maps[0][sa].numpy()),
                  go.Image(source=x0[1][sb]), go.Heatmap(z=maps[1][sb].numpy())],
            layout=dict(title_text=f"A {d.step_label(a, sa)} · B {d.step_label(b, sb)}")))
    fig.update_layout(title=f"A {d.step_label(a, 0)} · B {d.step_label(b, 0)}", width=640, height=680,
                      margin=dict(b=110))
    return d.animate(fig, frames)


# ---- helpers ------------------------------------------------------------------------------------------
def _picture(trace: Trace, step: int, of: str, vae: torch.nn.Module | None) -> str:
    return d.preview_uri(trace, step, of) if vae is None else d.png_uri(trace.decode(step, vae, of=of))


def _step_axis(fig: go.Figure, trace: Trace) -> None:
    fig.update_xaxes(title="step (noisy → clean)", range=[-0.5, trace.num_steps - 0.5],
                     dtick=d.step_tick(trace))


def _selection(trace: Trace, steps, layers) -> str:
    n = len(trace.step_indices(steps))
    which = "all steps" if n == trace.num_steps else f"{n} of {trace.num_steps} steps"
    return which + ("" if layers is None else f", layers {layers}")


def _difference(a: Trace, b: Trace) -> tuple[str, str]:
    """Labels naming what differs between two traces: prompt, guidance scale, steps or scheduler."""
    if a.prompt != b.prompt:
        return a.prompt, b.prompt
    if a.guidance_scale != b.guidance_scale:
        return f"guidance {a.guidance_scale:g}", f"guidance {b.guidance_scale:g}"
    if a.num_steps != b.num_steps:
        return f"{a.num_steps} steps", f"{b.num_steps} steps"
    if a.scheduler.get("name") != b.scheduler.get("name"):
        return a.scheduler.get("name", "A"), b.scheduler.get("name", "B")
    return "A", "B"


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _check_opacity(opacity: float) -> None:
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be between 0 and 1, not {opacity!r}.")


def _check_channel(trace: Trace, channel: int) -> None:
    c = trace.latents.shape[1]
    if not 0 <= channel < c:
        raise IndexError(f"channel {channel} is out of range: the latents have {c} channels (0..{c - 1}).")
