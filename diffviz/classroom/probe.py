"""Does a classroom model use a part of its prompt? Its denoising with the true caption against an edited one.

``edit_caption`` makes one part of a two-object caption wrong (``EDITS``). ``word_reliance`` needs no
sampling: each scene's latent is noised to timestep t, with the same noise for every caption, and the UNet
predicts x0 from the true caption and from each edited one. A model that uses the relation word predicts x0
worse with the opposite relation ("order"), most where the noisy latent does not yet show where the objects
are; swapping the two colours ("binding") is the reference, a part the model does use.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from . import data

CROSSWISE = {"left of": "above", "right of": "below", "above": "left of", "below": "right of"}
EDITS = ("colour", "shape", "axis", "binding", "order")
TIMESTEPS = (950, 850, 750, 650, 550, 450, 350, 250)


def held_out_scenes(layouts: int = 2, seed: int = 0) -> list[data.Scene]:
    """``layouts`` scenes of each held-out two-object prompt (``data.held_out_prompts()``, never a training
    caption), objects placed at random as training places them."""
    rng = np.random.default_rng(seed)
    out = []
    for caption in data.held_out_prompts()[1]:
        specs, relation = data.parse_caption(caption)
        objects = [data.Obj(d["shape"], d["colour"], d["size"] or "small", size_named=False) for d in specs]
        out += [data.make_scene(objects, relation, rng) for _ in range(layouts)]
    return out


def edit_caption(scene: data.Scene, edit: str) -> str:
    """``scene``'s caption with one part made wrong (``EDITS``): ``colour`` (both colours replaced by colours
    absent from the scene), ``shape`` (both shapes replaced), ``axis`` (a horizontal relation made vertical
    and back), ``binding`` (the two colours exchanged between the objects), ``order`` (the opposite relation:
    the same axis, the objects the other way round)."""
    a, b = scene.objects  # edited with replace: the caption still names what it named (a size or not)
    relation = scene.relation
    if edit == "colour":
        spare = [c for c in data.COLOURS if c not in (a.colour, b.colour)]
        a, b = replace(a, colour=spare[0]), replace(b, colour=spare[1])
    elif edit == "shape":
        spare = next(s for s in data.SHAPES if s not in (a.shape, b.shape))
        a, b = replace(a, shape=spare), replace(b, shape=a.shape)
    elif edit == "binding":
        a, b = replace(a, colour=b.colour), replace(b, colour=a.colour)
    elif edit == "axis":
        relation = CROSSWISE[relation]
    elif edit == "order":
        relation = data.OPPOSITE_RELATION[relation]
    else:
        raise ValueError(f"edit {edit!r} is not one of {EDITS}")
    return data.caption_of([a, b], relation)


@torch.no_grad()
def scene_latents(pipe, scenes: list[data.Scene]) -> torch.Tensor:
    """The scenes' latents ``[n, 4, h, w]`` as the UNet sees them (VAE mean times its scaling factor)."""
    latents = pipe.vae.encode(data.pixels([s.image for s in scenes])).latent_dist.mean
    return latents * pipe.vae.config.scaling_factor


@torch.no_grad()
def word_reliance(pipe, scenes: list[data.Scene], timesteps: tuple[int, ...] = TIMESTEPS,
                  edits: tuple[str, ...] = ("order", "binding"), seed: int = 0) -> list[dict]:
    """One row per timestep: ``t``, ``snr``, ``x0_error`` (mean squared, latent units, true caption) and per
    edit of ``edits`` ``{edit}_gap`` (the edited caption's extra x0 error, a share of the true one's) and
    ``{edit}_wins`` (the share of scenes whose x0 is closer with the true caption; 0.5: the edit changes
    nothing)."""
    from ..capture.families import family_of

    latents = scene_latents(pipe, scenes)
    captions = {"true": [s.caption for s in scenes]}
    captions |= {e: [edit_caption(s, e) for s in scenes] for e in edits}
    states = {}
    for kind, texts in captions.items():
        ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        states[kind] = pipe.text_encoder(ids)[0]
    family = family_of(pipe)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t in timesteps:
        ac = pipe.scheduler.alphas_cumprod[t]
        steps = torch.full((len(scenes),), t)
        xt = pipe.scheduler.add_noise(latents, torch.randn(latents.shape, generator=gen), steps)
        err = {kind: (family.x0(pipe.unet(xt, steps, st).sample, t, xt) - latents).pow(2).mean(dim=(1, 2, 3))
               for kind, st in states.items()}
        true = err["true"].mean().item()
        row = {"t": t, "snr": float(ac / (1 - ac)), "x0_error": true}
        for kind in edits:
            row[f"{kind}_gap"] = (err[kind].mean().item() - true) / true
            row[f"{kind}_wins"] = (err["true"] < err[kind]).float().mean().item()
        rows.append(row)
    return rows
