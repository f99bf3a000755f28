"""The explorer: every control redraws the FigureWidget from the trace, fast, without a model."""

from __future__ import annotations

import dataclasses

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.basedatatypes import Undefined

import diffviz
from diffviz import heatmap
from diffviz.viz import Explorer, explore
from diffviz.viz._draw import png_array
from diffviz.viz.explorer import ACCENT, CAPTIONS, COLOUR_WORDS, GREY, PER_ROW, SCALE_TITLE

from .conftest import generate

X0, NOISY, FINAL, UNDER, HEAT = range(5)


@pytest.fixture(scope="module")
def heads_trace(sd_pipe):
    """PROMPT, 5 DDIM steps, every head kept (2 heads at 32x32, 4 at 16x16)."""
    with diffviz.trace(sd_pipe, heads=True) as t:
        generate(sd_pipe, steps=5)
    return t.trace


@pytest.fixture(scope="module")
def other_trace(sd_pipe):
    """Another prompt ("red" and "blue" swapped, no "left"), another seed, 5 steps, every head kept."""
    with diffviz.trace(sd_pipe, heads=True) as t:
        generate(sd_pipe, "a blue circle above a red square", steps=5, seed=1)
    return t.trace


@pytest.fixture()
def app(heads_trace):
    return explore(heads_trace, ["red"])


def heat(app: Explorer, row: int = 0) -> np.ndarray:
    return np.asarray(app.figure.data[row * PER_ROW + HEAT].z)


def lines(app: Explorer) -> tuple:
    return app.figure.data[len(app.traces) * PER_ROW:]


def expected(tr, words, layers=None, heads=None) -> np.ndarray:
    """[step, h, w] the explorer should show for a selection."""
    idx = tr.token_indices(words)
    return heatmap.per_step(tr, idx, range(tr.num_steps), tr.layer_names(layers), heads).numpy()


def strongest_word(tr, layers=None, heads=None) -> float:
    return max(float(expected(tr, w, layers, heads).max()) for w in range(len(tr.words)))


def texts(app: Explorer) -> list[str]:
    return [a.text for a in app.figure.layout.annotations]


def test_explore_is_a_widget_app_with_the_controls_and_a_figure_widget(app, heads_trace):
    assert isinstance(app, widgets.VBox) and isinstance(app.figure, go.FigureWidget)
    assert app.figure in app.children
    assert (app.step.min, app.step.max) == (0, heads_trace.num_steps - 1)
    labels = [label for label, _ in app.words.options]
    assert labels == ["a", "red", "circle", "left", "of", "a (2nd)", "blue", "square"]
    assert app.words.rows == len(heads_trace.words)  # every word visible, no scrolling
    assert app.words.value == (1,)
    assert [label for label, _ in app.layers.options] == [
        "all layers", "down blocks (in)", "middle block", "up blocks (out)", "32x32 maps", "16x16 maps",
        "first down block, 32x32", "second down block, 16x16", "middle block, 16x16",
        "first up block (1 of 2), 16x16", "first up block (2 of 2), 16x16",
        "second up block (1 of 2), 32x32", "second up block (2 of 2), 32x32"]
    # the 32x32 layers have 2 heads, the 16x16 ones 4: every layer has heads 0 and 1
    assert [label for label, _ in app.heads.options] == ["mean of heads", "head 0", "head 1"]
    assert app.heads.layout.display != "none"
    types = [type(t).__name__ for t in app.figure.data]
    assert types == ["Image"] * 4 + ["Heatmap"] + ["Scatter"] * 8


def test_every_control_says_what_it_does(app):
    says = {app.play: "play", app.step: "step", app.words: "word", app.layers: "layers", app.heads: "head",
            app.opacity: "heat map", app.scale: "colour"}  # each tooltip names what its control changes
    for control, subject in says.items():
        assert subject in control.tooltip.lower(), (control.description, control.tooltip)
    assert len({c.tooltip for c in says}) == len(says)  # no tooltip copied onto another control
    assert len(app.scale.tooltips) == len(app.scale.options)
    assert "Ctrl-click" in app.words.tooltip


def test_first_draw_shows_step_0_and_the_final_image_on_its_own(app, heads_trace):
    fig = app.figure
    np.testing.assert_array_equal(png_array(fig.data[X0].source), heads_trace.preview(0).numpy())
    noisy = heads_trace.preview(0, of="latents").numpy()
    np.testing.assert_array_equal(png_array(fig.data[NOISY].source), noisy)
    for i in (FINAL, UNDER):  # the final image beside the maps, and under the heat map
        np.testing.assert_array_equal(png_array(fig.data[i].source), heads_trace.image.numpy())
    maps = expected(heads_trace, "red")
    np.testing.assert_allclose(heat(app), maps[0], atol=1e-6)
    assert fig.data[HEAT].opacity == 0.6
    # the colour bar says what it measures, and one scale serves every word: the strongest one's peak
    assert fig.data[HEAT].colorbar.title.text == SCALE_TITLE and fig.data[HEAT].showscale
    assert fig.data[HEAT].zmax == pytest.approx(strongest_word(heads_trace), rel=1e-5)
    assert fig.data[HEAT].zmax >= maps.max()
    assert f"step 0 of 4 (t={float(heads_trace.timesteps[0]):g})" in fig.layout.title.text
    assert "“red”, all layers" in texts(app)
    assert all(caption in texts(app) for caption in CAPTIONS)  # a caption under every panel
    assert fig.layout.shapes[0].x0 == 0


def test_moving_the_step_redraws_x0_noisy_latent_heat_map_and_marker(app, heads_trace):
    app.step.value = 3
    fig = app.figure
    np.testing.assert_array_equal(png_array(fig.data[X0].source), heads_trace.preview(3).numpy())
    noisy = heads_trace.preview(3, of="latents").numpy()
    np.testing.assert_array_equal(png_array(fig.data[NOISY].source), noisy)
    np.testing.assert_allclose(heat(app), expected(heads_trace, "red")[3], atol=1e-6)
    assert fig.layout.shapes[0].x0 == fig.layout.shapes[0].x1 == 3
    assert "step 3 of 4" in fig.layout.title.text


def test_play_hands_the_page_every_step_of_the_selection_and_the_slider_follows(app, heads_trace):
    app.words.value = (1, 6)
    app.step.value = 1
    app.play.value = True
    page = app._page
    assert page.playing and page.step == 1 and app.play.description == "❚❚ pause"
    frames = page.frames
    assert frames["images"] == [X0, NOISY] and frames["heat"] == [HEAT]
    assert len(frames["steps"]) == heads_trace.num_steps
    third = frames["steps"][3]
    np.testing.assert_array_equal(png_array(third["sources"][0]), heads_trace.preview(3).numpy())
    noisy = heads_trace.preview(3, of="latents").numpy()
    np.testing.assert_array_equal(png_array(third["sources"][1]), noisy)
    np.testing.assert_allclose(third["z"][0], expected(heads_trace, [1, 6])[3], atol=1e-5)
    assert "step 3 of 4" in third["title"]
    # the page draws the steps and reports them: the slider follows, the kernel draws nothing meanwhile
    sent = []
    app.figure.observe(lambda change: sent.append(change["new"]), ["_py2js_restyle", "_py2js_update"])
    page.step = 3
    assert app.step.value == 3 and not [m for m in sent if m]
    page.playing = False  # the page reached the end, or was paused
    assert not app.play.value and app.play.description == "▶ play"
    np.testing.assert_array_equal(png_array(app.figure.data[X0].source), heads_trace.preview(3).numpy())


def test_a_still_picture_for_notebooks_saved_without_the_app(app, heads_trace):
    still = app.still()
    assert "run the cell to explore" in still["text/plain"] and "“red”" in still["text/plain"]
    assert still["text/html"].count("<img alt='diffviz explorer") == 1
    picture = png_array("data:image/png;base64," + still["image/png"])
    side = heads_trace.width * (160 // heads_trace.width)  # x0, noisy input, final image, heat map over it
    assert picture.shape == (side, 4 * side + 3 * 2, 3)
    k = side // heads_trace.width
    final = np.repeat(np.repeat(heads_trace.image.numpy(), k, 0), k, 1)
    np.testing.assert_array_equal(picture[:, 2 * (side + 2): 2 * (side + 2) + side], final)


def test_several_words_are_summed_and_drawn_in_their_colours(app, heads_trace):
    app.step.value = 2
    app.words.value = (1, 2, 6)  # red, circle, blue
    np.testing.assert_allclose(heat(app), expected(heads_trace, [1, 2, 6])[2], atol=1e-6)
    assert "“red” + “circle” + “blue”, all layers" in texts(app)
    line = lines(app)
    assert [t.line.width for t in line] == [1.5, 3.5, 3.5, 1.5, 1.5, 1.5, 3.5, 1.5]
    # a colour word in its colour, another picked word in the accent colour, the rest grey
    assert line[1].line.color == COLOUR_WORDS["red"] and line[6].line.color == COLOUR_WORDS["blue"]
    assert line[2].line.color == ACCENT
    assert {line[i].line.color for i in (0, 3, 4, 5, 7)} == {GREY}
    app.words.value = (2,)
    assert line[1].line.color == COLOUR_WORDS["red"] and line[1].line.width == 1.5 and line[1].opacity < 1


def test_no_word_picked_clears_the_map_and_its_colour_bar(app):
    app.words.value = ()
    assert "pick a word" in texts(app)
    assert not heat(app).any()
    assert not app.figure.data[HEAT].showscale
    assert {t.line.width for t in lines(app)} == {1.5}


def test_fitted_colour_scale_ends_at_the_picked_words_peak(heads_trace):
    app = explore(heads_trace, ["circle"], scale="fit")
    assert app.figure.data[HEAT].zmax == pytest.approx(float(expected(heads_trace, "circle").max()))
    app.scale.value = "fixed"
    assert app.figure.data[HEAT].zmax == pytest.approx(strongest_word(heads_trace), rel=1e-5)
    with pytest.raises(ValueError, match="'fixed'"):
        explore(heads_trace, scale="auto")


def test_lines_are_word_shares_over_the_layer_filter_and_say_so(app, heads_trace):
    share = heatmap.word_share(heads_trace).numpy()
    np.testing.assert_allclose([t.y for t in lines(app)], share.T, atol=1e-3)
    assert "each word's share of attention, all layers" in texts(app)
    app.layers.value = "16x16"
    share = heatmap.word_share(heads_trace, heads_trace.layer_names("16x16")).numpy()
    np.testing.assert_allclose([t.y for t in lines(app)], share.T, atol=1e-3)
    assert "each word's share of attention, 16x16 maps" in texts(app)


def test_layer_filter_and_head_picker(app, heads_trace):
    app.layers.value = "16x16"
    assert [label for label, _ in app.heads.options][-1] == "head 3"  # 16x16 layers have 4 heads
    np.testing.assert_allclose(heat(app), expected(heads_trace, "red", "16x16")[0], atol=1e-6)
    app.heads.value = 3
    np.testing.assert_allclose(heat(app), expected(heads_trace, "red", "16x16", 3)[0], atol=1e-6)
    assert app.figure.data[HEAT].zmax == pytest.approx(strongest_word(heads_trace, "16x16", 3), rel=1e-5)
    assert "“red”, 16x16 maps, head 3" in texts(app)
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    app.layers.value = path  # 2 heads: head 3 is gone
    assert app.heads.value == -1 and len(app.heads.options) == 3
    np.testing.assert_allclose(heat(app), expected(heads_trace, "red", "down_blocks.0")[0], atol=1e-6)
    assert "“red”, first down block, 32x32" in texts(app)
    assert path in app.layer_hover.value  # the module path, for those who want it


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
    assert app.figure.data[HEAT].opacity == 0.25


def test_head_picker_is_hidden_when_only_the_head_mean_was_captured(traced):
    app = explore(traced[1])
    assert app.heads.layout.display == "none" and len(app.heads.options) == 1


def test_compare_two_traces_on_one_step_slider(heads_trace, other_trace):
    app = explore(heads_trace, ["red", "left"], compare=other_trace)
    fig = app.figure
    assert [type(t).__name__ for t in fig.data[:2 * PER_ROW]] == (["Image"] * 4 + ["Heatmap"]) * 2
    assert len(lines(app)) == len(heads_trace.words) + len(other_trace.words)
    np.testing.assert_array_equal(png_array(fig.data[PER_ROW + FINAL].source), other_trace.image.numpy())
    # the same words by their text: "left" is not in B's prompt, "red" is its 6th word
    np.testing.assert_allclose(heat(app, 1), expected(other_trace, "red")[0], atol=1e-6)
    app.step.value = 4
    np.testing.assert_array_equal(png_array(fig.data[X0].source), heads_trace.preview(4).numpy())
    np.testing.assert_array_equal(png_array(fig.data[PER_ROW + X0].source), other_trace.preview(4).numpy())
    np.testing.assert_allclose(heat(app, 0), expected(heads_trace, ["red", "left"])[4], atol=1e-6)
    np.testing.assert_allclose(heat(app, 1), expected(other_trace, "red")[4], atol=1e-6)
    # one colour scale for both rows
    peak = max(strongest_word(heads_trace), strongest_word(other_trace))
    assert fig.data[HEAT].zmax == fig.data[PER_ROW + HEAT].zmax == pytest.approx(peak, rel=1e-5)
    app.words.value = (3,)  # "left" only
    assert "“left”: not in this prompt" in texts(app) and not heat(app, 1).any()
    assert any(t and t.startswith("<b>B</b>: “a blue circle above a red square”") for t in texts(app))
    with pytest.raises(ValueError, match="as many steps"):
        explore(heads_trace, compare=_shorter(other_trace))
    with pytest.raises(ValueError, match="same layers"):
        explore(heads_trace, compare=dataclasses.replace(other_trace, layers=other_trace.layers[:2]))


def _shorter(trace):
    return dataclasses.replace(trace, timesteps=trace.timesteps[:3])


def test_explore_refuses_unknown_words(heads_trace):
    with pytest.raises(KeyError, match="its words are"):
        explore(heads_trace, ["dog"])
