"""Static pictures: what is drawn where."""

from __future__ import annotations

import numpy as np

from diffviz.viz.pictures import colorize, denoising_strip, overlay, strip, word_strip


def test_colorize_ends_of_the_scale():
    lut = colorize(np.array([[0.0, 1.0]]))
    assert lut.shape == (1, 2, 3) and lut[0, 0].sum() < 20 and lut[0, 1].sum() > 600  # black-ish .. light


def test_overlay_blends_the_heat_map_over_the_image(traced):
    _, tr = traced
    full = overlay(tr, "red", alpha=1.0)
    assert np.array_equal(full, colorize(tr.word_heatmap("red")))
    assert np.array_equal(overlay(tr, "red", alpha=0.0), tr.image.numpy())


def test_strips_lay_pictures_side_by_side(traced):
    _, tr = traced
    s = word_strip(tr, ["red", "square"], scale=2, gap=2)
    assert s.size == (3 * 128 + 2 * 2, 128)
    arr = np.asarray(s)
    assert np.array_equal(arr[::2, :128:2], tr.image.numpy())  # the image first, enlarged by nearest
    assert (arr[:, 128:130] == 255).all()  # white gap
    d = denoising_strip(tr, 3, scale=1, gap=0)
    assert d.size == (3 * 64, 64) and np.array_equal(np.asarray(d)[:, -64:], tr.preview(3).numpy())
    assert strip([tr.image], scale=1).size == (64, 64)


def test_denoising_strip_decodes_with_the_vae(sd_pipe, traced):
    _, tr = traced
    d = np.asarray(denoising_strip(tr, 3, of="latents", vae=sd_pipe.vae, scale=1, gap=0))
    last = d[:, -64:].astype(int)
    assert np.abs(last - tr.image.numpy()).max() <= 1  # the last latent decodes to the image itself
    assert np.abs(last - tr.preview(4, of="latents").numpy()).max() > 8  # not the linear preview
