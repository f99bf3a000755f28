"""Lesson 10, text embeddings and training (notebooks/10_text_and_training.ipynb).

The classroom text encoder has no layers: a token's state is ``LayerNorm(token embedding + position
embedding)``. ``token_states`` builds those states by hand, so a lesson can move a word's position embedding
to another word. ``word_gains`` measures what each part of a caption is worth to the denoiser, as a loss,
and ``tiny_trainer`` trains a small classroom model for a minute on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import verdict
from .lesson4 import distance  # RMS pixel difference in [0, 1]

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
CROSSWISE = {"left of": "above", "right of": "below", "above": "left of", "below": "right of"}
EDITS = ("colour", "shape", "axis", "binding", "order")
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
    """``[1, 77, d]`` text states of a text encoder without layers (the classroom's), built by hand:
    ``final_layer_norm(token_embedding(id_i) + position_embedding(positions[i]))``. ``positions`` (77 ints)
    defaults to 0..76, which gives exactly the encoder's output; ``replace`` maps a token index to a token
    embedding ``[d]`` used there instead (e.g. a mix of two words'). Pass as ``pipe(prompt_embeds=...)``."""
    enc = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
    if len(getattr(enc.encoder, "layers", ())) != 0:
        raise ValueError(f"this text encoder has {len(enc.encoder.layers)} layers, in which tokens mix: "
                         "its states are not token + position embeddings. "
                         "token_states is for the classroom encoder (0 layers).")
    ids = token_ids(pipe, prompt)
    pos = torch.arange(ids.shape[1]) if positions is None else torch.as_tensor(positions, dtype=torch.long)
    if pos.shape != (ids.shape[1],):
        raise ValueError(f"positions must be {ids.shape[1]} indices, one per token; "
                         f"got shape {list(pos.shape)}")
    emb = enc.embeddings
    tokens = emb.token_embedding(ids)  # [1, 77, d]
    for i, vector in (replace or {}).items():
        tokens[0, i] = vector
    return enc.final_layer_norm(tokens + emb.position_embedding(pos)[None])


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


def edit_caption(scene, edit: str) -> str:
    """``scene``'s caption with one part made wrong (``EDITS``): ``colour`` (both colours replaced by colours
    absent from the scene), ``shape`` (both shapes replaced), ``axis`` (a horizontal relation made vertical
    and back), ``binding`` (the two colours exchanged between the objects), ``order`` (the opposite relation:
    the same axis, the objects the other way round)."""
    from ..classroom import data

    a, b = scene.objects
    relation = scene.relation
    if edit == "colour":
        spare = [c for c in data.COLOURS if c not in (a.colour, b.colour)]
        a, b = data.Obj(a.shape, spare[0], a.size), data.Obj(b.shape, spare[1], b.size)
    elif edit == "shape":
        spare = next(s for s in data.SHAPES if s not in (a.shape, b.shape))
        a, b = data.Obj(spare, a.colour, a.size), data.Obj(a.shape, b.colour, b.size)
    elif edit == "binding":
        a, b = data.Obj(a.shape, b.colour, a.size), data.Obj(b.shape, a.colour, b.size)
    elif edit == "axis":
        relation = CROSSWISE[relation]
    elif edit == "order":
        relation = OPPOSITE[relation]
    else:
        raise ValueError(f"edit {edit!r} is not one of {EDITS}")
    return data.caption_of([a, b], relation)


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
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    x0 = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
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


# ---- exercise checks --------------------------------------------------------------------------------------
def check_reversed(prediction: str | None, image, reversed_image) -> bool:
    """Exercise: does reversing the order of the prompt's token states (each keeping its position embedding)
    change the picture "a lot" or "not at all" (RMS difference under 1/255)?"""
    d = distance(image, reversed_image)
    right = REVERSED_ANSWERS[0] if d < 1 / 255 else REVERSED_ANSWERS[1]
    answer = None if prediction is None else str(prediction).strip().lower()
    return verdict(prediction, answer == right,
                   f"{right} (RMS difference {d:.4f}): cross-attention sums over the tokens, "
                   "whatever their order; a word's place is only its position embedding.",
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
    """Exercise: the set of edits the model ignores (``ignored(gains)``), e.g. ``{"shape"}``."""
    right = ignored(gains)
    answer = None if prediction is None else {str(e).strip().lower() for e in prediction}
    return verdict(prediction, answer == right,
                   f"{sorted(right)}: each is worth under 5% of what {max(gains, key=gains.get)} is worth.",
                   f"a set of names from {EDITS}. Compare each gain printed above (shipped_gains) with the "
                   "largest one: an edit worth under 5% of it is one the model ignores.")


__all__ = ["EDITS", "REVERSED_ANSWERS", "check_first_learnt", "check_ignored", "check_reversed",
           "edit_caption", "ignored", "probe_scenes", "swapped", "tiny_trainer", "token_embedding",
           "token_ids", "token_states", "trained_pipeline", "word_gains", "word_position"]
