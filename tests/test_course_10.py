"""Lesson 10: hand-built token states, the word gains, the tiny trainer, and the exercise checks (True for the
right answer computed from real images and models, False for wrong ones and for an unanswered None)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffviz.classroom import load_pipeline
from diffviz.course import lesson10

from .conftest import generate

PROMPT = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def classroom():
    return load_pipeline()


def _draw(pipe, seed=5, **inputs):
    return np.asarray(pipe(num_inference_steps=4, generator=torch.Generator().manual_seed(seed),
                           **inputs).images[0])


def test_token_states_are_the_encoder_and_positions_move_words(classroom):
    ids = lesson10.token_ids(classroom, PROMPT)
    with torch.no_grad():
        assert torch.equal(lesson10.token_states(classroom, PROMPT), classroom.text_encoder(ids)[0])
    red, blue = (lesson10.word_position(classroom, PROMPT, "red"),
                 lesson10.word_position(classroom, PROMPT, "blue"))
    assert (red, blue) == (2, 7)
    moved = lesson10.token_states(classroom, PROMPT, lesson10.swapped(77, red, blue))
    words_swapped = lesson10.token_states(classroom, "a blue circle left of a red square")
    # the same set of states in another row order: "red" moved to position 7 is the state of "red" written
    # there
    assert (torch.equal(moved[0, red], words_swapped[0, blue])
            and torch.equal(moved[0, blue], words_swapped[0, red]))
    assert torch.equal(moved[0, :red], words_swapped[0, :red])
    assert not torch.allclose(moved[0, red], lesson10.token_states(classroom, PROMPT)[0, red])
    blue_vec = lesson10.token_embedding(classroom, "blue")
    assert torch.equal(lesson10.token_states(classroom, PROMPT, replace={red: blue_vec})[0, red],
                       lesson10.token_states(classroom, "a blue circle left of a blue square")[0, red])
    with pytest.raises(ValueError, match="not one token"):
        lesson10.token_embedding(classroom, "magenta")
    with pytest.raises(ValueError, match="not a token"):
        lesson10.word_position(classroom, PROMPT, "green")
    with pytest.raises(ValueError, match="77 indices"):
        lesson10.token_states(classroom, PROMPT, [0, 1, 2])


def test_token_states_refuse_an_encoder_with_layers(sd_pipe):
    with pytest.raises(ValueError, match="layers"):
        lesson10.token_states(sd_pipe, "a cat")


def test_check_reversed_on_real_pictures(classroom, sd_pipe):
    states = lesson10.token_states(classroom, PROMPT)
    image, flipped = _draw(classroom, prompt_embeds=states), _draw(classroom, prompt_embeds=states.flip(1))
    assert lesson10.check_reversed("not at all", image, flipped)
    assert not lesson10.check_reversed("a lot", image, flipped)
    assert not lesson10.check_reversed(None, image, flipped)
    other = generate(sd_pipe, seed=1)
    assert lesson10.check_reversed("a lot", generate(sd_pipe, seed=0), other)
    assert not lesson10.check_reversed("not at all", generate(sd_pipe, seed=0), other)


def test_edit_caption_makes_one_part_wrong():
    scene = lesson10.probe_scenes(1, seed=3)[0]
    (a, b), relation = scene.objects, scene.relation
    edited = {e: lesson10.edit_caption(scene, e) for e in lesson10.EDITS}
    assert len(set(edited.values()) | {scene.caption}) == len(lesson10.EDITS) + 1
    assert f"{b.colour} {a.shape}" in edited["binding"] and f"{a.colour} {b.shape}" in edited["binding"]
    assert lesson10.OPPOSITE[relation] in edited["order"] and lesson10.CROSSWISE[relation] in edited["axis"]
    assert a.colour not in edited["colour"].split() and b.shape not in edited["shape"].split()[-1:]
    with pytest.raises(ValueError, match="not one of"):
        lesson10.edit_caption(scene, "size")


def test_word_gains_and_their_checks_on_the_shipped_model(classroom):
    gains = lesson10.word_gains(classroom, lesson10.probe_scenes(24, seed=1))
    # the shipped model reads colour and shape words
    assert gains["colour"] > 0.005 and gains["shape"] > 0.005
    assert lesson10.check_first_learnt(max(gains, key=gains.get), gains)
    assert not lesson10.check_first_learnt(min(gains, key=gains.get), gains)
    assert not lesson10.check_first_learnt(None, gains)
    right = lesson10.ignored(gains)
    assert "colour" not in right
    assert lesson10.check_ignored(set(right), gains) and lesson10.check_ignored(sorted(right), gains)
    assert not lesson10.check_ignored(set(right) | {"colour"}, gains)
    assert not lesson10.check_ignored(None, gains)


def test_tiny_trainer_learns_and_is_reproducible(classroom):
    runs = []
    for _ in range(2):
        trainer = lesson10.tiny_trainer(classroom, n_scenes=64, batch=4)
        losses = [trainer.train_step().item() for _ in range(3)]
        runs.append((losses, [p.detach().clone() for p in trainer.unet.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert (sum(p.numel() for p in trainer.unet.parameters())
            < sum(p.numel() for p in classroom.unet.parameters()) / 8)
    young = lesson10.trained_pipeline(trainer)
    assert young.unet is trainer.unet and young.vae is classroom.vae
    image = _draw(young, prompt="a red circle")
    assert image.shape == (classroom.unet.config.sample_size * classroom.vae_scale_factor,) * 2 + (3,)
