"""The explorer: every control redraws the FigureWidget from the trace, fast, without a model."""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.basedatatypes import Undefined

import diffviz
from diffviz import heatmap
from diffviz.viz import Explorer, explore
from diffviz.viz._draw import png_array

from .conftest import generate


@pytest.fixture(scope="module")
def heads_trace(sd_pipe):
    """PROMPT, 5 DDIM steps, every head kept (2 heads at 32x32, 4 at 16x16)."""
    with diffviz.trace(sd_pipe, heads=True) as t:
        generate(sd_pipe, steps=5)
    return t


@pytest.fixture()
def app(heads_trace):
    return explore(heads_trace, ["red"])


def heat(app: Explorer) -> np.ndarray:
    return np.asarray(app.figure.data[3].z)


def expected(tr, words, layers=None, heads=None) -> np.ndarray:
    """[step, h, w] the explorer should show for a selection."""
    idx = tr.token_indices(words)
    return heatmap.per_step(tr, idx, range(tr.num_steps), tr.layer_names(layers), heads).numpy()


def test_explore_is_a_widget_app_with_the_controls_and_a_figure_widget(app, heads_trace):
    assert isinstance(app, widgets.VBox) and isinstance(app.figure, go.FigureWidget)
    assert app.figure in app.children
    assert (app.step.min, app.step.max) == (0, heads_trace.num_steps - 1)
    assert app.play.max == heads_trace.num_steps - 1
    assert [label for label, _ in app.words.options] == ["a", "red", "circle", "left", "of", "a #2", "blue",
                                                         "square"]
    assert app.words.value == (1,)
    layer_labels = [label for label, _ in app.layers.options]
    assert layer_labels[:6] == ["all layers", "down blocks", "mid blocks", "up blocks", "32x32 maps",
                                "16x16 maps"]
    # the 32x32 layers have 2 heads, the 16x16 ones 4: every layer has heads 0 and 1
    assert [label for label, _ in app.heads.options] == ["mean of heads", "head 0", "head 1"]
    types = [type(t).__name__ for t in app.figure.data]
    assert types == ["Image", "Image", "Image", "Heatmap"] + ["Scatter"] * 8


def test_first_draw_shows_step_0(app, heads_trace):
    fig = app.figure
    np.testing.assert_array_equal(png_array(fig.data[0].source), heads_trace.preview(0).numpy())
    np.testing.assert_array_equal(png_array(fig.data[1].source), heads_trace.preview(0, of="latents").numpy())
    np.testing.assert_array_equal(png_array(fig.data[2].source), heads_trace.image.numpy())
    maps = expected(heads_trace, "red")
    np.testing.assert_allclose(heat(app), maps[0], atol=1e-6)
    assert fig.data[3].zmax == pytest.approx(float(maps.max()))
    assert fig.layout.annotations[0].text == f"predicted x0, step 0 (t={float(heads_trace.timesteps[0]):g})"
    assert fig.layout.annotations[2].text == "“red”"
    assert fig.layout.shapes[0].x0 == 0


def test_moving_the_step_redraws_x0_noisy_latent_heat_map_and_marker(app, heads_trace):
    app.step.value = 3
    fig = app.figure
    np.testing.assert_array_equal(png_array(fig.data[0].source), heads_trace.preview(3).numpy())
    np.testing.assert_array_equal(png_array(fig.data[1].source), heads_trace.preview(3, of="latents").numpy())
    np.testing.assert_allclose(heat(app), expected(heads_trace, "red")[3], atol=1e-6)
    assert fig.layout.shapes[0].x0 == fig.layout.shapes[0].x1 == 3
    assert "step 3" in fig.layout.annotations[0].text


def test_several_words_are_summed_and_their_lines_bold(app, heads_trace):
    app.step.value = 2
    app.words.value = (1, 6)
    np.testing.assert_allclose(heat(app), expected(heads_trace, [1, 6])[2], atol=1e-6)
    assert app.figure.layout.annotations[2].text == "“red” + “blue”"
    widths = [t.line.width for t in app.figure.data[4:]]
    assert widths == [1, 3, 1, 1, 1, 1, 3, 1]
    app.words.value = ()
    assert app.figure.layout.annotations[2].text == "pick a word"
    assert not np.asarray(app.figure.data[3].z).any()


def test_layer_filter_and_head_picker(app, heads_trace):
    app.layers.value = "16x16"
    assert [label for label, _ in app.heads.options][-1] == "head 3"  # 16x16 layers have 4 heads
    np.testing.assert_allclose(heat(app), expected(heads_trace, "red", "16x16")[0], atol=1e-6)
    app.heads.value = 3
    np.testing.assert_allclose(heat(app), expected(heads_trace, "red", "16x16", 3)[0], atol=1e-6)
    assert app.figure.layout.annotations[2].text == "“red”, 16x16 maps, head 3"
    app.layers.value = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"  # 2 heads: head 3 is gone
    assert app.heads.value == -1 and len(app.heads.options) == 3
    np.testing.assert_allclose(heat(app), expected(heads_trace, "red", "down_blocks.0")[0], atol=1e-6)


def test_no_update_unsets_a_property_in_the_browser(heads_trace):
    """plotly.js's widget model applies each update to the copy of the figure it draws from (again
    whenever the output is shown), writing ``undefined`` for a trace an update names no value for: the
    heat map's opacity was lost that way. An update may leave out only what a trace does not have."""
    app = explore(heads_trace, ["red"])
    fig, sent = app.figure, []
    fig.observe(lambda change: sent.append(change["new"]), ["_py2js_restyle", "_py2js_update"])
    app.step.value = 2
    app.words.value = (1, 6)
    app.layers.value = "16x16"
    app.opacity.value = 0.3
    app.words.value = ()
    msgs = [m for m in sent if m]
    assert msgs
    for m in msgs:
        traces = m.get("restyle_traces", m.get("style_traces"))
        for prop, values in (m.get("restyle_data") or m.get("style_data") or {}).items():
            for i, v in zip(traces, values if isinstance(values, list) else [values] * len(traces)):
                if v is Undefined:
                    try:
                        held = fig.data[i][prop]
                    except (KeyError, ValueError):
                        continue  # not a property of this trace
                    assert held is None, f"an update unsets {prop} of trace {i} ({held!r})"


def test_opacity(app):
    app.opacity.value = 0.25
    assert app.figure.data[3].opacity == 0.25


def test_head_picker_is_off_when_only_the_head_mean_was_captured(traced):
    app = explore(traced[1])
    assert app.heads.disabled and len(app.heads.options) == 1


def test_explore_refuses_unknown_words(heads_trace):
    with pytest.raises(KeyError, match="its words are"):
        explore(heads_trace, ["dog"])
