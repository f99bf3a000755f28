"""Figures drawn from real traces of the tiny pipeline: what each one draws, frame by frame."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import diffviz
from diffviz import heatmap
from diffviz.viz import figures
from diffviz.viz._draw import png_array

from .conftest import generate


@pytest.fixture(scope="module")
def tr(traced):
    """PROMPT, 4 DDIM steps, guidance 7.5 (words: a red circle left of a blue square)."""
    return traced[1]


@pytest.fixture(scope="module")
def other(sd_pipe):
    """Another prompt, 3 steps, no classifier-free guidance."""
    with diffviz.trace(sd_pipe) as t:
        generate(sd_pipe, "a blue square", steps=3, seed=1, guidance_scale=1.0)
    return t


def image_ranges(fig: go.Figure, xaxis: str = "xaxis", yaxis: str = "yaxis"):
    return tuple(fig.layout[xaxis].range), tuple(fig.layout[yaxis].range)


def test_word_heatmap_draws_the_image_and_the_words_normalised_map(tr):
    fig = figures.word_heatmap(tr, "red", opacity=0.4)
    image, heat = fig.data
    assert isinstance(image, go.Image) and isinstance(heat, go.Heatmap)
    np.testing.assert_array_equal(png_array(image.source), tr.image.numpy())
    expected = tr.heatmap("red", size=heatmap.grid(tr)).numpy()
    np.testing.assert_allclose(heat.z, expected, atol=1e-6)
    assert heat.opacity == 0.4 and heat.zmin == 0 and heat.zmax == 1 and heat.showscale
    assert image_ranges(fig) == ((-0.5, 63.5), (63.5, -0.5))  # image pixels, y down
    # a 32x32 heat map covers the same 64 px as the image
    assert heat.x0 - heat.dx / 2 == pytest.approx(-0.5) and heat.x0 + 31.5 * heat.dx == pytest.approx(63.5)
    assert "“red”" in fig.layout.title.text and "all steps" in fig.layout.title.text


def test_word_heatmap_of_selected_steps_and_layers(tr):
    fig = figures.word_heatmap(tr, ["red", "circle"], steps=[0, 1], layers="up")
    expected = tr.heatmap(["red", "circle"], steps=[0, 1], layers="up", size=heatmap.grid(tr)).numpy()
    np.testing.assert_allclose(fig.data[1].z, expected, atol=1e-6)
    assert "“red” + “circle”" in fig.layout.title.text and "2 of 4 steps" in fig.layout.title.text


def test_word_grid_has_one_panel_per_word_and_sums_a_repeated_word_as_word_heatmap_does(tr):
    fig = figures.word_grid(tr, cols=4)
    assert len(fig.data) == 2 * 7
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["a (2×)", "red", "circle", "left", "of", "blue", "square"]
    heats = [t for t in fig.data if isinstance(t, go.Heatmap)]
    assert sum(bool(h.showscale) for h in heats) == 1  # one shared colour bar
    both = tr.word_heatmap("a", size=heatmap.grid(tr))
    np.testing.assert_allclose(heats[0].z, both.numpy(), atol=1e-6)
    assert not torch.allclose(both, tr.heatmap(0, size=heatmap.grid(tr)))  # not the first "a" alone
    assert image_ranges(fig, "xaxis7", "yaxis7") == ((-0.5, 63.5), (63.5, -0.5))
    by_index = figures.word_grid(tr, [0, 5])
    assert [a.text for a in by_index.layout.annotations] == ["a", "a (2nd)"]
    np.testing.assert_allclose(by_index.data[3].z, tr.heatmap(5, size=heatmap.grid(tr)).numpy(), atol=1e-6)


def test_word_grid_panels_grow_when_there_are_few_words(tr):
    two, eight = figures.word_grid(tr, ["red", "blue"]), figures.word_grid(tr, list(range(8)))
    panel = lambda f: (f.layout.xaxis.domain[1] - f.layout.xaxis.domain[0]) * (f.layout.width - 120)
    assert panel(two) >= 280 and panel(eight) >= 160 and two.layout.height >= 300


@pytest.fixture(scope="module")
def long_trace(sd_pipe):
    """A prompt of 60 words (under 77 tokens), 2 steps."""
    with diffviz.trace(sd_pipe) as t:
        generate(sd_pipe, " ".join(["a red circle left of a blue square a"] * 6) + " red square", steps=2)
    assert len(t.words) == 56
    return t


def test_word_grid_lays_out_any_number_of_words_and_pages_them(long_trace):
    every = list(range(len(long_trace.words)))
    fig = figures.word_grid(long_trace, every)  # 14 rows
    assert len(fig.data) == 2 * 56 and fig.layout.height > 14 * 170
    paged = figures.word_grid(long_trace, every, per_page=16)
    buttons = paged.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["words 1–16 of 56", "words 17–32 of 56", "words 33–48 of 56",
                                          "words 49–56 of 56"]
    assert sum(bool(t.visible) for t in paged.data) == 32
    visible, layout = buttons[3].args
    assert sum(visible["visible"]) == 16 and visible["visible"][2 * 48] and not visible["visible"][2 * 47]
    assert [a["text"] for a in layout["annotations"]][:2] == ["left (6th)", "of (6th)"]


def test_denoising_animation_has_a_frame_per_step_with_x0_noisy_latent_and_heat_map(tr):
    fig = figures.denoising(tr, "circle")
    assert [type(t).__name__ for t in fig.data] == ["Image", "Image", "Image", "Heatmap"]
    assert len(fig.frames) == tr.num_steps
    maps = heatmap.per_step(tr, tr.token_indices("circle"), range(tr.num_steps), tr.layer_names())
    for s, frame in enumerate(fig.frames):
        assert frame.name == str(s) and list(frame.traces) == [0, 1, 3]
        np.testing.assert_array_equal(png_array(frame.data[0].source), tr.preview(s).numpy())
        np.testing.assert_array_equal(png_array(frame.data[1].source), tr.preview(s, of="latents").numpy())
        np.testing.assert_allclose(frame.data[2].z, maps[s].numpy(), atol=1e-6)
        assert f"t={float(tr.timesteps[s]):g}" in frame.layout.title.text
    assert fig.data[3].zmax == pytest.approx(float(maps.max()))  # one colour scale over all steps
    slider = fig.layout.sliders[0]
    assert [st.label for st in slider.steps] == [str(s) for s in range(tr.num_steps)]
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["▶ play", "❚❚ pause"]
    assert [a.text for a in fig.layout.annotations][2] == "“circle” at this step"


def test_denoising_opens_where_x0_means_something_and_says_so_before(tr):
    fig = figures.denoising(tr, "red")
    first = next(s for s in range(tr.num_steps) if float(tr.sigma[s]) <= 1)
    assert first > 0 and fig.layout.sliders[0].active == first
    np.testing.assert_array_equal(png_array(fig.data[0].source), tr.preview(first).numpy())
    assert fig.layout.title.text == fig.frames[first].layout.title.text
    noisy = [s for s in range(tr.num_steps) if "still a blur" in fig.frames[s].layout.title.text]
    assert noisy == list(range(first))
    at0 = figures.denoising(tr, "red", start=0)
    assert at0.layout.sliders[0].active == 0 and "step 0 " in at0.layout.title.text


def test_animations_can_show_a_subset_of_steps(tr):
    fig = figures.denoising(tr, "red", steps=[0, 3])
    assert [f.name for f in fig.frames] == ["0", "3"]
    assert [st.label for st in fig.layout.sliders[0].steps] == ["0", "3"]
    np.testing.assert_array_equal(png_array(fig.frames[1].data[0].source), tr.preview(3).numpy())
    g = figures.guidance(tr, steps=slice(1, None, 2))
    assert [f.name for f in g.frames] == ["1", "3"]
    np.testing.assert_allclose(g.frames[1].data[1].z, tr.noise_cond[3, 0].numpy(), atol=1e-6)


def test_denoising_with_a_vae_decodes_exactly(tr, sd_pipe):
    fig = figures.denoising(tr, "red", vae=sd_pipe.vae)
    exact = tr.decode(-1, sd_pipe.vae).numpy()
    np.testing.assert_array_equal(png_array(fig.frames[-1].data[0].source), exact)
    assert fig.layout.title.text.startswith("Denoising, VAE decode")


def test_denoising_default_word_is_the_most_attended(tr):
    strongest = int(heatmap.word_mass(tr).sum(0).argmax())
    label = ["a", "red", "circle", "left", "of", "a (2nd)", "blue", "square"][strongest]
    assert figures.denoising(tr).layout.annotations[2].text == f"“{label}” at this step"


def test_word_mass_lines_are_shares_that_sum_to_100_per_step(tr):
    fig = figures.word_mass(tr)
    assert [t.name for t in fig.data] == ["a", "red", "circle", "left", "of", "a (2nd)", "blue", "square"]
    ys = np.array([t.y for t in fig.data])  # [word, step]
    np.testing.assert_allclose(ys.sum(0), 100, rtol=1e-4)
    assert list(fig.data[0].x) == list(range(tr.num_steps))
    assert fig.layout.xaxis.range == (-0.5, tr.num_steps - 0.5)
    raw = figures.word_mass(tr, share=False)
    np.testing.assert_allclose(np.array([t.y for t in raw.data]).T, heatmap.word_mass(tr).numpy(), rtol=1e-5)
    assert raw.layout.yaxis.title.text == "mean attention probability"


def test_layer_step_rows_follow_the_unet_down_mid_up(tr):
    fig = figures.layer_step(tr, "blue")
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (len(tr.layers), tr.num_steps)
    block = {l.name: l.block for l in tr.layers}
    blocks = [block[name_row[0]] for name_row in heat.customdata]
    assert blocks == sorted(blocks, key=["down", "mid", "up"].index) and len(set(blocks)) == 3
    assert heat.y[0] == "first down block · 32x32"
    rows = {l.name: r for l, r in zip(tr.layers, heatmap.layer_step(tr, "blue"))}
    for name_row, z in zip(heat.customdata, heat.z):
        np.testing.assert_allclose(z, rows[name_row[0]].numpy(), rtol=1e-6)
    assert "“blue”" in fig.layout.title.text


def test_guidance_shows_uncond_cond_difference_and_guided_with_the_scale(tr):
    fig = figures.guidance(tr, channel=2)
    assert len(fig.data) == 4 and len(fig.frames) == tr.num_steps
    assert "scale 7.5" in fig.layout.title.text and "channel 2" in fig.layout.title.text
    assert [a.text for a in fig.layout.annotations][3] == "guided: uncond + 7.5 × diff"
    for k in (0, tr.num_steps - 1):
        uncond, cond, diff, guided = (np.asarray(d.z) for d in fig.frames[k].data)
        np.testing.assert_allclose(uncond, tr.noise_uncond[k, 2].numpy(), atol=1e-6)
        np.testing.assert_allclose(diff, cond - uncond, atol=1e-5)
        np.testing.assert_allclose(guided, uncond + 7.5 * diff, atol=1e-4)
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax  # zero is white
    assert fig.data[2].coloraxis == "coloraxis2"


def test_guidance_needs_an_unconditional_prediction(other):
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        figures.guidance(other)


def test_schedule_plots_sigma_on_a_log_axis_and_alpha_bar(tr):
    fig = figures.schedule(tr)
    sigma, alpha = fig.data
    np.testing.assert_allclose(sigma.y, tr.sigma.numpy(), rtol=1e-6)
    np.testing.assert_allclose(alpha.y, tr.alpha_bar.numpy(), rtol=1e-6)
    np.testing.assert_allclose(sigma.customdata, tr.timesteps.float().numpy())
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.range == (0, 1.02)
    assert float(tr.sigma.max() / tr.sigma.min()) > 10
    assert fig.layout.yaxis.dtick == 1 and fig.layout.yaxis.exponentformat == "power"  # decades, no "2", "5"
    assert fig.layout.yaxis.title.text == "sigma (log scale)" and fig.layout.yaxis2.title.text == "alpha-bar"
    assert fig.layout.title.text == "Noise schedule: DDIMScheduler, 4 steps"


def test_channels_draws_each_latent_channel(tr):
    fig = figures.channels(tr)
    assert len(fig.data) == tr.latents.shape[1] == 4
    for c, t in enumerate(fig.data):
        np.testing.assert_allclose(t.z, tr.latents[-1, c].numpy())
    assert fig.layout.title.text == "Latent channels of latents, final"
    assert fig.layout.coloraxis.cmax == pytest.approx(float(tr.latents[-1].abs().max()))
    x0 = figures.channels(tr, 1, of="x0")
    np.testing.assert_allclose(x0.data[3].z, tr.x0[1, 3].numpy())
    assert image_ranges(x0) == ((-0.5, 31.5), (31.5, -0.5))  # latent cells
    with pytest.raises(IndexError, match="out of range"):
        figures.channels(tr, 9)
    with pytest.raises(ValueError, match="of must be one of"):
        figures.channels(tr, of="pixels")


def test_compare_aligns_two_traces_by_fraction_of_the_schedule(tr, other):
    fig = figures.compare(tr, other, "blue")
    assert len(fig.frames) == 4  # the longer trace's steps
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:4] == ["A: predicted x0", "A: “blue” at this step",
                          "B: predicted x0", "B: “blue” at this step"]
    assert fig.layout.yaxis.title.text == "A: a red circle left of a blue square"
    assert fig.layout.yaxis3.title.text == "B: a blue square"
    picks = [0, 1, 1, 2]  # 4 steps of A onto 3 of B: round(k * 2 / 3)
    for k, frame in enumerate(fig.frames):
        np.testing.assert_array_equal(png_array(frame.data[0].source), tr.preview(k).numpy())
        np.testing.assert_array_equal(png_array(frame.data[2].source), other.preview(picks[k]).numpy())
        assert frame.layout.title.text == (f"A step {k} (t={float(tr.timesteps[k]):g}) · "
                                           f"B step {picks[k]} (t={float(other.timesteps[picks[k]]):g})")
    with pytest.raises(KeyError, match="not a word"):
        figures.compare(tr, other, "circle")


def test_figures_refuse_bad_arguments_with_the_allowed_values(tr):
    with pytest.raises(ValueError, match="opacity must be between 0 and 1"):
        figures.word_heatmap(tr, "red", opacity=2)
    with pytest.raises(KeyError, match="its words are"):
        figures.word_heatmap(tr, "dog")
    with pytest.raises(IndexError, match="4 channels"):
        figures.guidance(tr, channel=4)
    with pytest.raises(ValueError, match="no captured layer matches"):
        figures.denoising(tr, "red", layers="64x64")


def test_figures_work_on_a_trace_loaded_from_disk(tr, tmp_path):
    loaded = diffviz.load_trace(tr.save(tmp_path / "t.dvz"))
    a, b = figures.denoising(tr, "red"), figures.denoising(loaded, "red")
    assert a.to_json() == b.to_json()


def test_figures_run_on_one_thread_and_restore_torchs_thread_count(tr, monkeypatch):
    seen = []
    real = heatmap.word_share
    monkeypatch.setattr(heatmap, "word_share",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    torch.set_num_threads(2)  # conftest runs the suite on 1 thread: start from another count
    try:
        figures.word_mass(tr)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
