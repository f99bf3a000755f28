"""Lesson 10, text embeddings and training (notebooks/10_text_and_training.ipynb).

The classroom text encoder's input for a token is ``token embedding + position embedding``, then one causal
self-attention layer and a layer norm. ``token_states`` builds that input by hand and runs the encoder on it,
so a lesson can move a word's position embedding to another word. ``word_gains`` measures what each part of a
caption is worth to the denoiser, as a loss, ``tiny_trainer`` trains a small classroom model for a minute on
the CPU, ``loss_trainer`` and ``check_loss`` let a student write the training loss, and ``learn_word`` teaches
the frozen model a new word (textual inversion).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Sequence

import numpy as np
import torch

from ..classroom.probe import EDITS, edit_caption, scene_latents
from . import Solutions, tensor_answer, verdict
from .lesson4 import distance  # RMS pixel difference in [0, 1]

REVERSED_ANSWERS = ("not at all", "a lot")


# ---- token and position embeddings ------------------------------------------------------------------------
def token_ids(pipe, prompt: str) -> torch.Tensor:
    """The prompt's token ids, padded to the tokenizer's length: ``[1, 77]``."""
    tok = pipe.tokenizer
    return tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def word_position(pipe, prompt: str, word: str) -> int:
    """Index of ``word``'s (first) token among the prompt's tokens (0 is the start token)."""
    tokens = pipe.tokenizer.convert_ids_to_tokens(token_ids(pipe, prompt)[0])
    for i, t in enumerate(tokens):
        if t.removesuffix("</w>") == word:
            return i
    raise ValueError(f"{word!r} is not a token of {prompt!r}; its tokens are {tokens[:12]}")


def token_embedding(pipe, word: str) -> torch.Tensor:
    """``[d]``: the token embedding of ``word`` (one token of the tokenizer's vocabulary)."""
    tok = pipe.tokenizer
    i = tok.convert_tokens_to_ids(f"{word}</w>")
    if i == tok.unk_token_id:
        raise ValueError(f"{word!r} is not one token of this tokenizer")
    return pipe.text_encoder.get_input_embeddings().weight[i].detach()


@torch.no_grad()
def token_states(pipe, prompt: str, positions: Sequence[int] | torch.Tensor | None = None,
                 replace: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """``[1, 77, d]`` text states of the classroom's CLIP text encoder with its input built by hand: each
    token's input is ``token_embedding(id_i) + position_embedding(positions[i])``, then the encoder's own
    layers (the shipped one has one causal self-attention layer, in which a token reads the tokens before it)
    and final layer norm. ``positions`` (77 ints) defaults to 0..76, which gives exactly the encoder's output;
    ``replace`` maps a token index to a token embedding ``[d]`` used there instead (e.g. a mix of two
    words'). Pass as ``pipe(prompt_embeds=...)``."""
    enc = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
    ids = token_ids(pipe, prompt)
    pos = torch.arange(ids.shape[1]) if positions is None else torch.as_tensor(positions, dtype=torch.long)
    if pos.shape != (ids.shape[1],):
        raise ValueError(f"positions must be {ids.shape[1]} indices, one per token; "
                         f"got shape {list(pos.shape)}")
    emb = enc.embeddings
    inputs = emb.token_embedding(ids)  # [1, 77, d]
    for i, vector in (replace or {}).items():
        inputs[0, i] = vector
    inputs = inputs + emb.position_embedding(pos)[None]
    # the encoder runs as it always does (its masks, its layers), on these inputs instead of its own
    handle = emb.register_forward_hook(lambda module, args, out: inputs.to(out.dtype))
    try:
        return pipe.text_encoder(ids.to(pipe.text_encoder.device))[0]
    finally:
        handle.remove()


def swapped(n: int, i: int, j: int) -> torch.Tensor:
    """Positions 0..n-1 with ``i`` and ``j`` exchanged."""
    pos = torch.arange(n)
    pos[[i, j]] = pos[[j, i]]
    return pos


# ---- what each part of a caption is worth -----------------------------------------------------------------
def probe_scenes(n: int = 64, seed: int = 0, image_size: int | None = None) -> list:
    """``n`` two-object classroom scenes, every colour and size named, the two colours and the two shapes
    different (so each edit of ``edit_caption`` changes the caption). A pure function of ``seed``."""
    from ..classroom import data

    size = image_size or data.IMAGE_SIZE
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        colours = rng.choice(list(data.COLOURS), 2, replace=False)
        shapes = rng.choice(data.SHAPES, 2, replace=False)
        objs = [data.Obj(str(s), str(c), ("small", "large")[rng.integers(2)])
                for c, s in zip(colours, shapes)]
        relation = data.RELATIONS[rng.integers(len(data.RELATIONS))]
        try:
            out.append(data.make_scene(objs, relation, rng, size))
        except ValueError:  # two large objects that do not fit side by side
            continue
    return out


@torch.no_grad()
def word_gains(pipe, scenes, *, unet=None, text_encoder=None, seed: int = 0,
               t_range: tuple[int, int] = (100, 900)) -> dict[str, float]:
    """What each part of the caption is worth to the denoiser, per edit of ``EDITS``: the mean over ``scenes``
    of MSE(noise prediction | edited caption) - MSE(noise prediction | true caption), with the same noisy
    latents and timesteps (uniform in ``t_range``) for both. Positive: the model uses that part; about 0: it
    ignores it. ``unet``/``text_encoder`` default to ``pipe``'s; pass a model in training to probe it with
    ``pipe``'s VAE, tokenizer and scheduler."""
    unet, text_encoder = unet or pipe.unet, text_encoder or pipe.text_encoder
    was_training = unet.training, text_encoder.training
    unet.eval(), text_encoder.eval()
    x0 = scene_latents(pipe, scenes)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(*t_range, (len(scenes),), generator=gen)
    xt = pipe.scheduler.add_noise(x0, noise, t)

    def loss(captions: list[str]) -> torch.Tensor:  # [scene]
        ids = torch.cat([token_ids(pipe, c) for c in captions])
        return (unet(xt, t, text_encoder(ids)[0]).sample - noise).pow(2).mean(dim=(1, 2, 3))

    true = loss([s.caption for s in scenes])
    gains = {e: float((loss([edit_caption(s, e) for s in scenes]) - true).mean()) for e in EDITS}
    unet.train(was_training[0]), text_encoder.train(was_training[1])
    return gains


def ignored(gains: dict[str, float], fraction: float = 0.05) -> set[str]:
    """The edits worth less than ``fraction`` of the largest gain: the parts of a caption the model
    ignores."""
    top = max(gains.values())
    return {e for e, g in gains.items() if g < fraction * top}


# ---- a tiny training run ----------------------------------------------------------------------------------
# the tiny UNet has a quarter of the classroom UNet's channels: ~16x fewer multiply-adds a step
TINY_WIDTH = 4


def tiny_trainer(pipe, *, n_scenes: int = 1024, batch: int = 16, lr: float = 2e-3, seed: int = 0):
    """A ``diffviz.classroom.train.Trainer`` for a new classroom model at ``pipe``'s size: random token and
    position embeddings, a UNet with ``1 / TINY_WIDTH`` of the classroom UNet's channels, ``pipe``'s trained
    VAE (its latents of ``n_scenes`` training scenes, computed here). ``trainer.train_step()`` runs one
    step; the batch at step s is a pure function of (seed, s), so a run is the same every time on the CPU."""
    from diffusers import UNet2DConditionModel

    from ..classroom import data, model, train

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    args = train.parse_args(["--image-size", str(size), "--n-scenes", str(n_scenes), "--batch", str(batch),
                             "--lr", str(lr), "--warmup", "20", "--seed", str(seed), "--device", "cpu"])
    latents = train.precompute(pipe.vae, args, torch.device("cpu"), data.benchmark_exclusions(),
                               progress=False)
    comps = model.build_components(seed, size)
    torch.manual_seed(seed)
    config = model.unet_config(size)
    channels = tuple(16 * max(1, round(c / TINY_WIDTH / 16)) for c in config["block_out_channels"])
    # 16 a head
    config.update(block_out_channels=channels, attention_head_dim=tuple(c // 16 for c in channels))
    comps.update(unet=UNet2DConditionModel(**config), vae=pipe.vae)
    return train.Trainer(args, comps, torch.device("cpu"),
                         latents["latents"] * pipe.vae.config.scaling_factor,
                         latents["ids"], latents["objects"], latents["empty_ids"][0])


def trained_pipeline(trainer):
    """A pipeline of ``trainer``'s current weights (not its EMA average, which lags far behind in a short
    run)."""
    from ..classroom import model

    pipe = model.assemble(dict(trainer.comps, unet=trainer.unet, text_encoder=trainer.text))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- the training loss, by hand ---------------------------------------------------------------------------
def loss_trainer(pipe, images: Sequence[np.ndarray], captions: Sequence[str], *, batch: int = 8,
                 seed: int = 0):
    """A ``diffviz.classroom.train.Trainer`` for the loss only: frozen copies of ``pipe``'s UNet and text
    encoder, and a training set of ``images`` (``[H, W, 3]`` uint8, encoded with ``pipe``'s VAE) captioned
    ``captions`` (tokenised by ``pipe``'s tokenizer), each drawn equally often. ``trainer.batch()`` draws a
    batch of ``batch`` as the trainer does (``trainer.step`` picks which), ``trainer.loss(*batch)`` is the
    training objective. ``pipe`` is unchanged, and ``train_step`` refuses (nothing can learn)."""
    from ..classroom import data, train

    if len(images) != len(captions) or not len(images):
        raise ValueError(f"give one caption per image, at least one; got {len(images)} images and "
                         f"{len(captions)} captions")
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    args = train.parse_args(["--device", "cpu", "--image-size", str(size), "--batch", str(batch),
                             "--seed", str(seed)])
    comps = dict(unet=copy.deepcopy(pipe.unet).requires_grad_(False),
                 text_encoder=copy.deepcopy(pipe.text_encoder).requires_grad_(False),
                 vae=pipe.vae, tokenizer=pipe.tokenizer, scheduler=copy.deepcopy(pipe.scheduler))
    with torch.no_grad():
        latents = pipe.vae.encode(data.pixels(images)).latent_dist.mean * pipe.vae.config.scaling_factor
    ids = torch.cat([token_ids(pipe, c) for c in captions])
    ones = torch.ones(len(images), dtype=torch.int8)  # "one object each": the trainer then draws them evenly
    return train.Trainer(args, comps, torch.device("cpu"), latents, ids, ones, token_ids(pipe, "")[0])


def _plain(trainer):
    """``trainer`` with every min-SNR weight 1 (gamma infinite): the plain epsilon MSE."""
    plain = copy.copy(trainer)
    plain.args = argparse.Namespace(**dict(vars(trainer.args), min_snr=math.inf))
    return plain


LOSS_HINT = ("x_t mixes x0 and the noise as the formula above says, with alpha_bar at each sample's own "
             "timestep t; the loss is the mean squared difference between predict(x_t) and what the UNet "
             "is trained to predict (the min-SNR weights are optional).")
ROOTS_HINT = ("your x_t has the right ingredients but not their square roots: alpha_bar is a share of "
              "variance, and the coefficients scale amplitudes (x_t keeps a variance of about 1).")
SWAPPED_HINT = ("your x_t weighs x0 and the noise the wrong way round: at t = 0 alpha_bar is almost 1 and "
                "x_t is almost x0.")
TARGET_HINT = "the UNet is trained to predict the noise that was added, not the clean latents x0."
SUM_HINT = "average the squared differences (a mean over samples, channels and pixels), not a sum."
SQUARE_HINT = "square the differences, then average them (no absolute value, no square root)."


def _xt_hint(x_t, x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor, shape_hint: str) -> str:
    """What is off in a wrong ``x_t``, for the known mistakes; ``a`` is alpha_bar ``[B, 1, 1, 1]``."""
    if shape_hint:
        return shape_hint
    powers = [(p, q) for p in (0.5, 1.0) for q in (0.5, 1.0) if (p, q) != (0.5, 0.5)]
    if any(tensor_answer(x_t, a.pow(p) * x0 + (1 - a).pow(q) * noise, "")[0] for p, q in powers):
        return ROOTS_HINT
    if tensor_answer(x_t, (1 - a).sqrt() * x0 + a.sqrt() * noise, "")[0]:
        return SWAPPED_HINT
    return "x_t is not right yet: " + LOSS_HINT


@torch.no_grad()
def check_loss(answer, x_t, trainer, batch) -> bool:
    """Exercise: the noised latents ``x_t [B, C, h, w]`` and the loss (a number) of ``batch = (x0, tokens,
    noise, t)``, against the trainer's objective ``trainer.loss(*batch)``: the plain epsilon MSE and the
    min-SNR-weighted one are both right. ``x_t`` may be None (then only the loss is checked). A wrong answer
    gets a hint naming the ingredient that is off."""
    x0, tokens, noise, t = batch
    xt = trainer.comps["scheduler"].add_noise(x0, noise, t)  # diffusers' own noising, not the trainer's line
    weighted, plain = trainer.loss(*batch), _plain(trainer).loss(*batch)
    ok_weighted, ok_plain = tensor_answer(answer, weighted, "")[0], tensor_answer(answer, plain, "")[0]
    xt_ok, shape_hint = (True, "") if x_t is None else tensor_answer(x_t, xt, "")
    hint = LOSS_HINT
    if not xt_ok:
        hint = _xt_hint(x_t, x0, noise, trainer.alphas_cumprod[t].view(-1, 1, 1, 1), shape_hint)
    elif answer is not None and not (ok_weighted or ok_plain):
        pred = trainer.denoise(xt, t, trainer.text(tokens)[0]).sample
        mse = (pred - noise).pow(2)
        mistakes = [(TARGET_HINT, (pred - x0).pow(2).mean()), (SUM_HINT, mse.sum()),
                    (SQUARE_HINT, (pred - noise).abs().mean()), (SQUARE_HINT, mse.mean().sqrt())]
        hint = next((why for why, value in mistakes if tensor_answer(answer, value, "")[0]), hint)
    which = "the plain epsilon MSE" if ok_plain else "the loss with the trainer's min-SNR weights"
    right = (f"{float(plain if ok_plain else weighted):.5f}, {which}. Trainer.loss gives {float(plain):.5f} "
             f"with every weight 1 and {float(weighted):.5f} with min-SNR-{trainer.args.min_snr:g} weights.")
    return verdict(answer, (ok_weighted or ok_plain) and xt_ok, right, hint)


solution = Solutions(
    reversed="""\
my_reversal = "not at all"
# one pixel's cross-attention output is sum_i softmax_i(q . k_i) v_i over the 77 rows: a sum (and the
# softmax's normaliser) does not depend on the order of its terms, and each row keeps its own content
""",
    ignored="""\
best = max(shipped_gains.values())
my_ignored = {e for e, g in shipped_gains.items() if g < 0.05 * best}  # worth under 5% of the best edit""",
    first_learnt="""\
# after training, the edit whose gain stands highest above the untrained model's noise level
my_first = max(tiny_gains, key=tiny_gains.get)""",
    loss="""\
a = alpha_bar[t].view(-1, 1, 1, 1)           # each sample's alpha_bar, broadcast over [C, h, w]
x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
eps_hat = predict(x_t)
answer = (eps_hat - noise).pow(2).mean()     # the plain loss: every sample weighs 1
# or, as the trainer does, with min-SNR-5 weights per sample:
snr = a.view(-1) / (1 - a.view(-1))
answer = (snr.clamp(max=5) / snr * (eps_hat - noise).pow(2).mean(dim=(1, 2, 3))).mean()
""",
)


# ---- textual inversion: a new word ------------------------------------------------------------------------
def concept_images(caption: str, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``n`` training pictures (``[H, W, 3]`` uint8) of a one-object classroom ``caption`` ("a large green
    circle"; an unnamed size is drawn large), each placed anew: a pure function of ``seed``."""
    from ..classroom import data

    objects, relation = data.parse_caption(caption)
    if relation is not None or objects[0]["colour"] is None:
        raise ValueError(f"give one object with its colour, e.g. 'a large green circle'; got {caption!r}")
    rng = np.random.default_rng(seed)
    thing = data.Obj(objects[0]["shape"], objects[0]["colour"], objects[0]["size"] or "large")
    return [data.make_scene([thing], None, rng).image for _ in range(n)]


def with_word(pipe, word: str, vector: torch.Tensor):
    """A pipeline that knows one more token, ``word``, whose token embedding is ``vector [d]``: copies of
    ``pipe``'s tokenizer, text encoder and scheduler, ``pipe``'s own UNet and VAE. ``pipe`` is unchanged."""
    from ..classroom import model

    tok = copy.deepcopy(pipe.tokenizer)
    if tok.add_tokens([word]) != 1:
        raise ValueError(f"{word!r} is already a token of this tokenizer; pick a new word, e.g. '<mine>'")
    text = copy.deepcopy(pipe.text_encoder)
    table = text.get_input_embeddings().weight.detach()  # [vocabulary, d]
    if tok.convert_tokens_to_ids(word) != len(table):
        raise ValueError(f"the tokenizer has {len(tok) - 1} tokens and the text encoder {len(table)} "
                         "embeddings: they must match")
    # a new table with one more row (no random init: the torch RNG of the caller is left alone)
    text.set_input_embeddings(torch.nn.Embedding.from_pretrained(torch.cat([table, vector.detach()[None]])))
    text.config.vocab_size = len(tok)
    out = model.assemble(dict(vae=pipe.vae, unet=pipe.unet, tokenizer=tok, text_encoder=text,
                              scheduler=copy.deepcopy(pipe.scheduler)))
    out.set_progress_bar_config(disable=True)
    return out


def learn_word(pipe, images: Sequence[np.ndarray], *, word: str = "<mine>", start: str = "a",
               steps: int = 300, batch: int = 16, lr: float = 0.05, seed: int = 0,
               progress: bool = True) -> torch.Tensor:
    """Textual inversion (Gal et al. 2022): the token embedding ``[d]`` of a new word ``word`` learnt so that
    the captions "a <word>" denoise ``images`` (``[H, W, 3]`` uint8, a handful of one concept) well. The
    objective is the trainer's (``Trainer.loss``: min-SNR weights, 10% empty captions) on ``steps``
    batches of ``batch`` drawn as the trainer draws them; the word's embedding, starting as ``start``'s,
    is the only thing that learns (Adam, ``lr``). ``pipe`` is unchanged; a pure function of ``seed``."""
    from tqdm import tqdm

    vector = token_embedding(pipe, start).clone().requires_grad_(True)  # [d]
    taught = with_word(pipe, word, vector.detach())
    trainer = loss_trainer(taught, images, [f"a {word}"] * len(images), batch=batch, seed=seed)
    new = taught.tokenizer.convert_tokens_to_ids(word)

    def put(module, args, out):  # wherever the word is read, its embedding is `vector`
        return torch.where((args[0] == new)[..., None], vector, out)

    hook = trainer.text.get_input_embeddings().register_forward_hook(put)
    opt = torch.optim.Adam([vector], lr=lr)
    try:
        # a text bar on stdout, as the trainer's: a notebook keeps its last state (a widget's text, its first)
        bar = tqdm(range(steps), desc=f"learning {word}", disable=not progress, mininterval=1,
                   file=sys.stdout)
        for step in bar:
            trainer.step = step  # the trainer's batch of this step: a pure function of (seed, step)
            loss = trainer.loss(*trainer.batch())
            (vector.grad,) = torch.autograd.grad(loss, vector)  # the UNet and the encoder are frozen
            opt.step()
            if step % 25 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    finally:
        hook.remove()
    return vector.detach().clone()


def nearest_words(pipe, vector: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` caption words (``data.vocabulary()``) whose token embeddings are closest to ``vector [d]`` by
    cosine, closest first, with their cosines."""
    from ..classroom import data

    words = data.vocabulary()
    table = torch.stack([token_embedding(pipe, w) for w in words])  # [word, d]
    cos = torch.nn.functional.cosine_similarity(table, vector[None], dim=1)
    order = cos.argsort(descending=True)[:k]
    return [(words[i], float(cos[i])) for i in order]


@torch.no_grad()
def judged_share(pipe, prompt: str, caption: str, n: int = 16, steps: int = 25) -> tuple[float, list]:
    """Draw ``prompt`` with seeds 0..n-1 (``steps`` steps): the share of the pictures the classroom judge
    finds right as ``caption``, and the pictures (``[H, W, 3]`` uint8)."""
    from ..classroom import judge

    gens = [torch.Generator().manual_seed(s) for s in range(n)]
    pics = [np.asarray(im) for im in pipe([prompt] * n, num_inference_steps=steps, generator=gens).images]
    return sum(judge.judge(caption, im)["correct"] for im in pics) / n, pics


# ---- exercise checks --------------------------------------------------------------------------------------
def check_reversed(prediction: str | None, image, reversed_image) -> bool:
    """Exercise: does reversing the order of the prompt's token states (each keeping its position embedding)
    change the picture "a lot" or "not at all" (RMS difference under 1/255)?"""
    d = distance(image, reversed_image)
    right = REVERSED_ANSWERS[0] if d < 1 / 255 else REVERSED_ANSWERS[1]
    answer = None if prediction is None else str(prediction).strip().lower()
    return verdict(prediction, answer == right,
                   f"{right} (RMS difference {d:.4f}): cross-attention sums over the tokens, "
                   "whatever their order; a word's place reaches the U-Net only inside each row (its "
                   "position embedding, and what the encoder's causal layer read from the words before it).",
                   f"answer one of {REVERSED_ANSWERS}. To reason it out, write one pixel's cross-attention "
                   "output as a formula over the 77 token states (lesson 2) and follow what reordering the "
                   "rows does to it. To measure it, show pictures.strip([base, reversed_image]) and compute "
                   "lesson4.distance(base, reversed_image), the RMS difference: under 1/255 counts as "
                   "\"not at all\".")


def check_first_learnt(prediction: str | None, gains: dict[str, float]) -> bool:
    """Exercise: the part of the caption (one of ``EDITS``) the tiny model gained most from."""
    right = max(gains, key=gains.get)
    answer = None if prediction is None else str(prediction).strip().lower()
    ranked = ", ".join(f"{e} {g:.1e}" for e, g in sorted(gains.items(), key=lambda kv: -kv[1]))
    return verdict(prediction, answer == right, f"{right}: {ranked}.",
                   f"one of {EDITS}. The table above prints each edit's gain every 100 steps: which gain "
                   "of its last row (tiny_gains) stands far above the same edit's gain in the row of step 0, "
                   "the untrained model, whose gains are measurement noise?")


def check_ignored(prediction, gains: dict[str, float]) -> bool:
    """Exercise: the set of edits the model ignores (``ignored(gains)``), e.g. ``{"shape"}``, or ``set()``."""
    right, top = ignored(gains), max(gains, key=gains.get)
    answer = None if prediction is None else {str(e).strip().lower() for e in prediction}
    return verdict(prediction, answer == right,
                   f"{sorted(right)}: each is worth under 5% of what {top} is worth." if right else
                   f"set(), none: every edit is worth at least 5% of what {top} is worth.",
                   f"a set of names from {EDITS}. Compare each gain printed above (shipped_gains) with the "
                   "largest one: an edit worth under 5% of it is one the model ignores.")


__all__ = ["EDITS", "REVERSED_ANSWERS", "check_first_learnt", "check_ignored", "check_loss", "check_reversed",
           "concept_images", "edit_caption", "ignored", "judged_share", "learn_word", "loss_trainer",
           "nearest_words", "probe_scenes", "solution", "swapped", "tiny_trainer", "token_embedding",
           "token_ids", "token_states", "trained_pipeline", "with_word", "word_gains", "word_position"]
