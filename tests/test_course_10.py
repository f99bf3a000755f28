"""Lesson 10: hand-built token states, the word gains, the tiny trainer, and the exercise checks (True for the
right answer computed from real images and models, False for wrong ones and for an unanswered None)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffviz.classroom import data, judge, load_pipeline, probe
from diffviz.course import lesson10

from .conftest import generate, printed_answer

PROMPT = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def classroom():
    return load_pipeline()


def _draw(pipe, seed=5, **inputs):
    return np.asarray(pipe(num_inference_steps=4, generator=torch.Generator().manual_seed(seed),
                           **inputs).images[0])


def _rows_differ(a, b):
    """[77] bool: which rows of two [1, 77, d] states differ."""
    return (a - b).abs().amax(dim=-1)[0] > 0


def test_token_states_are_the_encoder_and_positions_move_through_the_causal_layer(classroom):
    ids = lesson10.token_ids(classroom, PROMPT)
    with torch.no_grad():
        encoded = classroom.text_encoder(ids)[0]
    states = lesson10.token_states(classroom, PROMPT)
    assert torch.equal(states, encoded)  # positions=None is exactly the encoder's output
    red, blue = (lesson10.word_position(classroom, PROMPT, "red"),
                 lesson10.word_position(classroom, PROMPT, "blue"))
    assert (red, blue) == (2, 7)
    moved = lesson10.token_states(classroom, PROMPT, lesson10.swapped(77, red, blue))
    # causal: rows before the first moved position are unchanged, later rows change
    changed = _rows_differ(moved, states)
    assert not changed[:red].any() and changed[red:blue + 1].all() and changed[blue + 1:].any()
    # moving position embeddings is not writing the words there: the rows between the two differ, the rows
    # after both read the same (word, position) pairs and agree
    words_swapped = lesson10.token_states(classroom, "a blue circle left of a red square")
    differ = _rows_differ(moved, words_swapped)
    assert not differ[:red].any() and differ[red:blue + 1].all()
    assert torch.allclose(moved[0, blue + 1:], words_swapped[0, blue + 1:], atol=1e-5)
    # replace= at a row changes that row and the rows after it, not those before
    blue_vec = lesson10.token_embedding(classroom, "blue")
    replaced = lesson10.token_states(classroom, PROMPT, replace={red: blue_vec})
    assert torch.equal(replaced, lesson10.token_states(classroom, "a blue circle left of a blue square"))
    changed = _rows_differ(replaced, states)
    assert not changed[:red].any() and changed[red] and changed[red + 1]
    with pytest.raises(ValueError, match="not one token"):
        lesson10.token_embedding(classroom, "magenta")
    with pytest.raises(ValueError, match="not a token"):
        lesson10.word_position(classroom, PROMPT, "green")
    with pytest.raises(ValueError, match="77 indices"):
        lesson10.token_states(classroom, PROMPT, [0, 1, 2])


def test_token_states_are_the_encoder_on_an_encoder_with_more_layers(sd_pipe):
    ids = lesson10.token_ids(sd_pipe, "a cat")
    with torch.no_grad():
        encoded = sd_pipe.text_encoder(ids.to(sd_pipe.text_encoder.device))[0]
    assert torch.equal(lesson10.token_states(sd_pipe, "a cat"), encoded)


def test_check_reversed_on_real_pictures(classroom, sd_pipe, capsys):
    states = lesson10.token_states(classroom, PROMPT)
    image, flipped = _draw(classroom, prompt_embeds=states), _draw(classroom, prompt_embeds=states.flip(1))
    assert lesson10.check_reversed(printed_answer(lesson10.solution, "reversed", capsys, "my_reversal"),
                                   image, flipped)
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
    assert data.OPPOSITE_RELATION[relation] in edited["order"]
    assert probe.CROSSWISE[relation] in edited["axis"]
    assert a.colour not in edited["colour"].split() and b.shape not in edited["shape"].split()[-1:]
    with pytest.raises(ValueError, match="not one of"):
        lesson10.edit_caption(scene, "size")


def test_word_gains_and_their_checks_on_the_shipped_model(classroom, capsys):
    gains = lesson10.word_gains(classroom, lesson10.probe_scenes(24, seed=1))
    # the shipped model reads colour and shape words
    assert gains["colour"] > 0.005 and gains["shape"] > 0.005
    my_first = printed_answer(lesson10.solution, "first_learnt", capsys, "my_first", tiny_gains=gains)
    my_ignored = printed_answer(lesson10.solution, "ignored", capsys, "my_ignored", shipped_gains=gains)
    assert lesson10.check_first_learnt(my_first, gains) and lesson10.check_ignored(my_ignored, gains)
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


def _loss_batch(classroom, n=4):
    scenes = lesson10.probe_scenes(n, seed=2)
    trainer = lesson10.loss_trainer(classroom, [s.image for s in scenes], [s.caption for s in scenes],
                                    batch=n)
    x0, tokens, noise, t = batch = trainer.batch()
    alpha_bar = trainer.alphas_cumprod

    @torch.no_grad()
    def predict(x_t):
        return classroom.unet(x_t, t, classroom.text_encoder(tokens)[0]).sample

    return trainer, batch, dict(x0=x0, noise=noise, t=t, alpha_bar=alpha_bar, predict=predict, torch=torch)


def test_check_loss_accepts_the_trainers_loss_and_names_a_wrong_ingredient(classroom, capsys):
    trainer, batch, names = _loss_batch(classroom)
    x0, _, noise, t = batch
    a = names["alpha_bar"][t].view(-1, 1, 1, 1)
    predict = names["predict"]
    right = a.sqrt() * x0 + (1 - a).sqrt() * noise
    plain = (predict(right) - noise).pow(2).mean()
    snr = a.view(-1) / (1 - a.view(-1))
    weighted = (snr.clamp(max=5) / snr * (predict(right) - noise).pow(2).mean(dim=(1, 2, 3))).mean()
    assert not torch.allclose(plain, weighted, rtol=1e-2)  # the batch tells the two apart
    assert lesson10.check_loss(plain, right, trainer, batch)
    assert lesson10.check_loss(float(weighted), right, trainer, batch)
    assert lesson10.check_loss(plain, None, trainer, batch)
    capsys.readouterr()
    # the noise scaled by (1 - alpha_bar) instead of its square root
    wrong = a.sqrt() * x0 + (1 - a) * noise
    assert not lesson10.check_loss((predict(wrong) - noise).pow(2).mean(), wrong, trainer, batch)
    assert "square roots" in capsys.readouterr().out
    swapped = (1 - a).sqrt() * x0 + a.sqrt() * noise
    assert not lesson10.check_loss((predict(swapped) - noise).pow(2).mean(), swapped, trainer, batch)
    assert "wrong way round" in capsys.readouterr().out
    # the clean latents as the target, a sum for a mean
    assert not lesson10.check_loss((predict(right) - x0).pow(2).mean(), right, trainer, batch)
    assert "not the clean latents" in capsys.readouterr().out
    assert not lesson10.check_loss((predict(right) - noise).pow(2).sum(), right, trainer, batch)
    assert "not a sum" in capsys.readouterr().out
    assert not lesson10.check_loss(plain, right[:, :2], trainer, batch)
    assert "shape" in capsys.readouterr().out
    assert not lesson10.check_loss(None, None, trainer, batch)
    assert "Not answered" in capsys.readouterr().out
    # the printed solution, run as a student would, passes the check
    answer, x_t = printed_answer(lesson10.solution, "loss", capsys, ("answer", "x_t"), **names)
    assert lesson10.check_loss(answer, x_t, trainer, batch)
    with pytest.raises(ValueError, match="no solution"):
        lesson10.solution("reverse")


def test_loss_trainer_is_the_trainer_on_frozen_copies(classroom):
    trainer, _, _ = _loss_batch(classroom)
    assert trainer.unet is not classroom.unet and not any(p.requires_grad for p in trainer.params)
    before = trainer.unet.conv_in.weight.clone()
    with pytest.raises(RuntimeError):  # nothing can learn
        trainer.train_step()
    assert torch.equal(trainer.unet.conv_in.weight, before)
    assert torch.equal(classroom.unet.conv_in.weight, before)


CONCEPT = "a large green circle"
TINY_STEPS = 20  # textual inversion at tiny size: 20 batches of 8 (measured: 8 of 8 right, untrained 0)


def test_learn_word_teaches_the_concept_and_leaves_the_pipeline_unchanged(classroom):
    embedding = classroom.text_encoder.get_input_embeddings().weight.clone()
    n_tokens = len(classroom.tokenizer)
    images = lesson10.concept_images(CONCEPT, n=8)
    assert all(judge.judge(CONCEPT, im)["correct"] for im in images)
    mine = lesson10.learn_word(classroom, images, steps=TINY_STEPS, batch=8, progress=False)
    start = lesson10.token_embedding(classroom, "a")
    learnt, _ = lesson10.judged_share(lesson10.with_word(classroom, "<mine>", mine), "a <mine>", CONCEPT,
                                      n=8, steps=8)
    untrained, _ = lesson10.judged_share(lesson10.with_word(classroom, "<mine>", start), "a <mine>", CONCEPT,
                                         n=8, steps=8)
    assert learnt > untrained
    # the shipped pipeline is as it was: no new token, the same embeddings
    assert len(classroom.tokenizer) == n_tokens
    assert torch.equal(classroom.text_encoder.get_input_embeddings().weight, embedding)
    near = lesson10.nearest_words(classroom, mine, k=3)
    assert len(near) == 3 and near[0][1] >= near[1][1] >= near[2][1]
    assert lesson10.nearest_words(classroom, start, k=1) == [("a", pytest.approx(1.0))]


def test_learn_word_is_seeded_and_refuses_a_known_word(classroom):
    images = lesson10.concept_images(CONCEPT, n=4)
    runs = [lesson10.learn_word(classroom, images, steps=3, batch=4, progress=False) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], lesson10.token_embedding(classroom, "a"))
    with pytest.raises(ValueError, match="already a token"):
        lesson10.with_word(lesson10.with_word(classroom, "<mine>", runs[0]), "<mine>", runs[0])
    with pytest.raises(ValueError, match="one object"):
        lesson10.concept_images("a red circle left of a blue square")
