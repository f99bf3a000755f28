"""Attribution on tiny pipelines: the rebuilt step is the traced one, IG adds up, the pipeline is
untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffviz
from diffviz.attribution import agreement, attribute, region_attention, region_mask, spearman
from diffviz.capture import family_of
from diffviz.testing import tiny_pipeline

from .conftest import PROMPT, generate
from .test_capture import assert_same, snapshot


@pytest.fixture(scope="module")
def traced_xl(sdxl_pipe):
    with diffviz.trace(sdxl_pipe) as tr:
        generate(sdxl_pipe)
    return tr


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_rebuilt_step_is_the_traced_one(kind, sd_pipe, sdxl_pipe, traced, traced_xl):
    """The forward function captum differentiates gives exactly the x0 and guided noise of the trace."""
    pipe, tr = (sd_pipe, traced[1]) if kind == "sd" else (sdxl_pipe, traced_xl)  # DDIM / Euler
    for target, want in (("x0", tr.x0[2]), ("noise", tr.noise_guided[2])):
        model = family_of(pipe).step_model(tr, 2, target)
        model.prepare()
        with torch.no_grad():
            pred = model.prediction(*model.encode(*model.ids))[0]
        torch.testing.assert_close(pred, want.float(), atol=1e-4, rtol=1e-4)


def test_integrated_gradients_add_up_within_delta(sd_pipe, traced):
    tr = traced[1]
    before = snapshot(sd_pipe)
    a = attribute(sd_pipe, tr, 1, (0, 0, 32, 32), n_steps=6, internal_batch_size=6, word="red")
    assert_same(before, snapshot(sd_pipe))
    assert a.delta is not None and abs(a.delta) < 0.05 * abs(a.total)
    assert abs(float(a.token_scores.sum()) - a.total) <= abs(a.delta) + 1e-6 * abs(a.total)
    assert a.word_scores.shape == (len(tr.words),)
    torch.testing.assert_close(a.word_scores.sum(), a.token_scores.sum())
    assert a.pixel_map.shape == (tr.height, tr.width) and a.region.shape == (tr.height, tr.width)
    assert set(a.ranking()) == set(tr.words)


def test_input_x_gradient_is_a_directional_derivative(sd_pipe, traced):
    """sum(embeds * grad F) = d/dh F((1 + h) * embeds) at h = 0, checked by a finite difference."""
    tr = traced[1]
    a = attribute(sd_pipe, tr, 2, method="input_x_gradient", target="noise")
    model = family_of(sd_pipe).step_model(tr, 2, "noise")
    model.prepare()
    with torch.no_grad():
        e, _ = model.encode(*model.ids)
        direction = model.prediction(e) - model.prediction(model.encode(*model.baseline_ids())[0])
        words = [t.position for t in tr.tokens]  # the attributed (stored) tokens

        def f(h: float) -> float:
            scaled = e.clone()
            scaled[:, words] *= 1 + h
            return float((model.prediction(scaled) * direction).sum(1).mean())

        numeric = (f(1e-3) - f(-1e-3)) / 2e-3
    assert float(a.token_scores.sum()) == pytest.approx(numeric, rel=0.02, abs=1e-7)
    s = attribute(sd_pipe, tr, 2, method="saliency", target="noise")
    assert (s.token_scores >= 0).all() and s.delta is None


def test_float16_pipeline_gets_float32_gradients_and_is_restored():

    pipe = tiny_pipeline("sd", "ddim").to(torch.float16)
    pipe.set_progress_bar_config(disable=True)
    with diffviz.trace(pipe) as tr:
        generate(pipe, steps=2)
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    a = attribute(pipe, tr, 0, method="saliency")
    assert pipe.unet.dtype == torch.float16 and pipe.text_encoder.dtype == torch.float16
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in weights.items())
    assert a.token_scores.dtype == torch.float32 and torch.isfinite(a.token_scores).all()


def test_attention_ranking_agreement(traced):
    tr = traced[1]
    box = (0, 0, 32, 64)
    att = region_attention(tr, box, steps=1)
    fake = type("A", (), {})()  # an attribution whose scores are the attention itself: perfect agreement
    fake.region, fake.step, fake.word_scores = region_mask(box, tr.height, tr.width), 1, att.clone()
    agr = agreement(tr, fake)
    assert agr.spearman == pytest.approx(1.0)
    assert agr.ranks()[0] == agr.ranks()[1]
    fake.word_scores = -att
    assert agreement(tr, fake).spearman == pytest.approx(-1.0)
    # region attention is the heat map's mean over the box
    full = tr.heatmap(normalize=False, steps=1, words=2, size=(64, 64))[:, :32]
    assert float(att[2]) == pytest.approx(float(full.mean()), rel=0.02)


def test_spearman():
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 1, 2])) == pytest.approx(-0.5)
    assert spearman(torch.tensor([1.0, 1, 2]), torch.tensor([1.0, 1, 2])) == pytest.approx(1.0)  # ties


def test_bad_requests_are_refused_with_the_allowed_values(sd_pipe, traced):
    tr = traced[1]
    with pytest.raises(ValueError, match="integrated_gradients"):
        attribute(sd_pipe, tr, 0, method="gradcam")
    with pytest.raises(ValueError, match="x0"):
        attribute(sd_pipe, tr, 0, target="latent")
    with pytest.raises(ValueError, match="inside the 64x64 image"):
        attribute(sd_pipe, tr, 0, (0, 0, 100, 10))
    with pytest.raises(KeyError, match="its words are"):
        attribute(sd_pipe, tr, 0, word="green")
    with pytest.raises(IndexError, match="4 steps"):
        attribute(sd_pipe, tr, 9)
    with pytest.raises(ValueError, match="does not reproduce the trace"):
        attribute(tiny_pipeline("sd", "ddim", seed=1), tr, 1, method="saliency")
    assert PROMPT == tr.prompt


def test_figures(sd_pipe, traced):
    from diffviz.viz import why

    tr = traced[1]
    a = attribute(sd_pipe, tr, 3, (0, 0, 32, 64), method="input_x_gradient", word="circle")
    g = agreement(tr, a)
    for fig in (why.attribution_bars(a), why.attention_vs_attribution(g), why.word_attribution(tr, a)):
        assert fig.to_json() and fig.layout.title.text
    bars = why.attribution_bars(a).data[0]
    assert list(bars.x)[:3] == ["a", "red", "circle"] and np.allclose(bars.y, a.word_scores.numpy())
    assert "Spearman" in why.attention_vs_attribution(g).layout.title.text
    # the region outlines (one per panel) draw no legend entries over the colour bar's title
    outlines = [t for t in why.word_attribution(tr, a).data if t.name == "region"]
    assert len(outlines) == 2 and all(t.showlegend is False for t in outlines)
    with pytest.raises(ValueError, match="word="):
        why.word_attribution(tr, attribute(sd_pipe, tr, 3, method="saliency"))
