"""Lesson 5's measurements (context shares, the padding intervention, region change) and the completeness
check, on the tiny SD pipeline and real traces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffviz
from diffviz.attribution import attribute
from diffviz.course import lesson2, lesson5
from diffviz.testing import tiny_pipeline

from .conftest import PROMPT, generate

LEFT = (0, 0, 32, 64)  # the left half of the tiny pipeline's 64x64 images


@pytest.fixture(scope="module")
def every_token(sd_pipe):
    """(image, trace with every context position) of PROMPT, 4 DDIM steps."""
    with diffviz.trace(sd_pipe, tokens="all") as tr:
        image = generate(sd_pipe)
    return image, tr


def test_context_shares_split_each_pixels_attention(every_token, traced):
    _, tr = every_token
    shares = lesson5.context_shares(tr)
    assert list(shares) == ["start", "words", "end", "padding"]
    assert sum(shares.values()) == pytest.approx(1, abs=1e-3) and min(shares.values()) > 0
    assert shares["start"] == pytest.approx(lesson2.token_share(tr, 0), rel=1e-5)
    with pytest.raises(ValueError, match="tokens='all'"):
        lesson5.context_shares(traced[1])  # words and specials only


def test_padded_replaces_only_the_words_tokens_by_padding(sd_pipe, every_token):
    image, tr = every_token
    kw = {"num_inference_steps": 4, "height": 64, "width": 64}
    out = np.asarray(lesson5.padded(sd_pipe, tr, "red", seed=0, **kw))
    ids = sd_pipe.tokenizer(PROMPT, padding="max_length", max_length=sd_pipe.tokenizer.model_max_length,
                            return_tensors="pt").input_ids
    ids[0, tr.tokens[tr.token_indices("red")[0]].position] = sd_pipe.tokenizer.pad_token_id
    with torch.no_grad():
        embeds = sd_pipe.text_encoder(ids)[0]
    by_hand = sd_pipe(prompt_embeds=embeds, generator=torch.Generator().manual_seed(0), **kw).images[0]
    assert np.array_equal(out, np.asarray(by_hand))
    assert not np.array_equal(out, np.asarray(image))  # the word mattered


def test_padded_needs_a_unet_pipeline(every_token):
    with pytest.raises(ValueError, match="U-Net"):
        lesson5.padded(tiny_pipeline("sd3"), every_token[1], "red")


def test_region_change():
    base = np.zeros((4, 4, 3), np.uint8)
    other = base.copy()
    other[:, :2] = 255  # the left half turned white
    assert lesson5.region_change(base, base) == 0
    assert lesson5.region_change(other, base) == pytest.approx(0.5)
    assert lesson5.region_change(other, base, (0, 0, 2, 4)) == pytest.approx(1)
    assert lesson5.region_change(other, base, (2, 0, 4, 4)) == 0
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[0, 3] = True
    assert lesson5.region_change(other, base, torch.from_numpy(mask)) == pytest.approx(0.5)


def test_check_shares_sum(sd_pipe, traced, capsys):
    a = attribute(sd_pipe, traced[1], 1, LEFT, n_steps=4)
    right = float(a.word_scores.sum()) / a.total
    assert lesson5.check_shares_sum(right, a, prediction=right)
    assert "was close" in capsys.readouterr().out
    assert lesson5.check_shares_sum(right, a, prediction=right + 0.5)
    assert "was off" in capsys.readouterr().out
    assert not lesson5.check_shares_sum(right + 0.1, a)
    assert not lesson5.check_shares_sum(right * 100, a)  # a percentage
    assert not lesson5.check_shares_sum(None, a)
