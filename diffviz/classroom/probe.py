"""Does a classroom model use a word of its prompt? Its x0 with the true caption against an edited one.

No sampling: each scene's latent is noised to timestep t, with the same noise for every caption, and the UNet
predicts x0 from the true caption, from the caption with the opposite relation ("left of" <-> "right of"), and
from the caption with the two objects' colours swapped. A model that uses the relation word predicts x0 worse
with the opposite relation, most where the noisy latent does not yet show where the objects are; the colour
swap is the reference, a word binding the model does use.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from . import data
from .model import MAX_TOKENS

TIMESTEPS = (950, 850, 750, 650, 550, 450, 350, 250)
EDITS = ("relation", "colours")


def probe_scenes(layouts: int = 2, seed: int = 0) -> list[data.Scene]:
    """``layouts`` scenes of each held-out two-object prompt (``data.held_out_prompts()``, never a training
    caption), objects placed at random as training places them."""
    rng = np.random.default_rng(seed)
    out = []
    for caption in data.held_out_prompts()[1]:
        specs, relation = data.parse_caption(caption)
        objects = [data.Obj(d["shape"], d["colour"], d["size"] or "small", size_named=False) for d in specs]
        out += [data.make_scene(objects, relation, rng) for _ in range(layouts)]
    return out


def edited_captions(scene: data.Scene) -> dict[str, str]:
    """``{"true", "relation" (the opposite relation), "colours" (the two colours swapped)}`` of a two-object
    scene."""
    a, b = scene.objects
    recoloured = [dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour)]
    return {"true": scene.caption,
            "relation": data.caption_of(scene.objects, data.OPPOSITE_RELATION[scene.relation]),
            "colours": data.caption_of(recoloured, scene.relation)}


@torch.no_grad()
def word_reliance(pipe, scenes: list[data.Scene], timesteps: tuple[int, ...] = TIMESTEPS,
                  seed: int = 0) -> list[dict]:
    """One row per timestep: ``t``, ``snr``, ``x0_error`` (mean squared, latent units, true caption) and per
    edit ``{edit}_gap`` (the edited caption's extra x0 error, a share of the true one's) and ``{edit}_wins``
    (the share of scenes whose x0 is closer with the true caption; 0.5: the edit changes nothing)."""
    from ..capture.families import family_of

    images = torch.tensor(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
    captions = [edited_captions(s) for s in scenes]
    states = {}
    for kind in ("true", *EDITS):
        ids = pipe.tokenizer([c[kind] for c in captions], padding="max_length", max_length=MAX_TOKENS,
                             return_tensors="pt").input_ids
        states[kind] = pipe.text_encoder(ids)[0]
    family = family_of(pipe)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t in timesteps:
        ac = pipe.scheduler.alphas_cumprod[t]
        xt = ac.sqrt() * latents + (1 - ac).sqrt() * torch.randn(latents.shape, generator=gen)
        steps = torch.full((len(scenes),), t)
        err = {kind: (family.x0(pipe.unet(xt, steps, st).sample, t, xt) - latents).pow(2).mean(dim=(1, 2, 3))
               for kind, st in states.items()}
        true = err["true"].mean().item()
        row = {"t": t, "snr": float(ac / (1 - ac)), "x0_error": true}
        for kind in EDITS:
            row[f"{kind}_gap"] = (err[kind].mean().item() - true) / true
            row[f"{kind}_wins"] = (err["true"] < err[kind]).float().mean().item()
        rows.append(row)
    return rows
