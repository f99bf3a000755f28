"""Train the classroom model: ``python -m diffviz.classroom.train [--device cuda] [--max-minutes 100]``.

Two stages, both seeded and resumable from ``--ckpt`` (safetensors + JSON only):
1. the VAE alone on freshly drawn scenes (short);
2. the latents of ``--n-scenes`` scenes are precomputed once, then the UNet and the text encoder
   (embeddings only) are trained together on plain denoising (epsilon, min-SNR weighting, 10% caption
   dropout for classifier-free guidance, EMA weights). No loss touches the attention maps, unless
   ``--ground`` adds one that pulls each word's map onto the object the word names (``grounding``).

Every ``--ship-every`` minutes the EMA model is written with ``save_pretrained`` to ``--weights``
(the package's shipped model) and as a snapshot under ``<ckpt>/snapshots/`` for the learning curve.
The batch at step ``s`` is a pure function of (seed, s): stopping and resuming gives the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..capture.processor import CrossAttnProcessor
from ..regions import pool
from . import data, model
from .presets import PRESETS

CAPTION_DROPOUT = 0.1
EMA_DECAY = 0.999
MIN_SNR_GAMMA = 5.0


# ---------------------------------------------------------------- optimizer state as safetensors + JSON
def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps({"param_groups": sd["param_groups"], "scalars": scalars}))


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    tensors = load_file(str(path.with_suffix(".safetensors")))
    meta = json.loads(path.with_suffix(".json").read_text())
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---------------------------------------------------------------- stage 1: VAE
def train_vae(vae, args, device) -> None:
    """Reconstruction (MSE) + 1e-6 KL on freshly drawn ``args.image_size`` scenes; cosine lr decay to 5%."""
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    bar = tqdm(range(args.vae_steps), desc="vae", mininterval=2, file=sys.stdout)
    for step in bar:
        scenes = data.scenes(args.seed * 1_000_003 + 7 + step, args.vae_batch, image_size=args.image_size)
        x = data.pixels([s.image for s in scenes]).to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = args.vae_lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / args.vae_steps)))
        if step % 20 == 0:
            bar.set_postfix(mse=f"{rec_loss.item():.5f}")
    vae.eval()


def object_masks(scene: data.Scene, side: int) -> torch.Tensor:
    """The share of each ``side x side`` latent cell that each object covers: float16 ``[2, side, side]``
    (zeros for a second object a scene lacks)."""
    cover = [pool(torch.from_numpy(mask), (side, side)) for mask in scene.masks]
    cover += [torch.zeros(side, side)] * (2 - len(cover))
    return torch.stack(cover).half()


def token_objects(scene: data.Scene) -> torch.Tensor:
    """int8 ``[77]``: at each token of the caption, the object its word names (its colour, size or shape),
    -1 for the start, end and padding tokens, "a" and the relation's words. Every caption word is one token
    of the classroom tokenizer, so word ``i`` is token ``i + 1``."""
    out = torch.full((model.MAX_TOKENS,), -1, dtype=torch.int8)
    for i, (_, obj) in enumerate(scene.word_objects()):
        if obj is not None:
            out[i + 1] = obj
    return out


@torch.no_grad()
def precompute(vae, args, device, exclude, progress: bool = True) -> dict:
    """Latents ``[n, 4, s/4, s/4]`` (VAE mean), token ids ``[n, 77]``, object counts ``[n]``, object masks
    ``[n, 2, s/4, s/4]`` and the object each token names ``[n, 77]`` (``object_masks``, ``token_objects``) of
    ``data.scenes(seed, n)``, streamed; ``progress`` shows a bar. With ``args.mirror`` each two-object scene
    is followed by its ``data.mirrored`` twin, and ``partner [n]`` holds each scene's twin (-1: none)."""
    tok = model.tokenizer()
    # the same scenes, in the same order, as data.scenes(args.seed, ..., plain=args.plain)
    rng = np.random.default_rng(args.seed)
    latents, ids, objects, masks, tokens = [], [], [], [], []
    for start in tqdm(range(0, args.n_scenes, 512), desc="latents", mininterval=5, file=sys.stdout,
                      disable=not progress):
        chunk = [data.random_scene(rng, exclude, args.image_size, args.plain)
                 for _ in range(min(512, args.n_scenes - start))]
        if args.mirror:
            chunk = [twin for s in chunk for twin in ([s, data.mirrored(s)] if s.relation else [s])]
        pixels = data.pixels([s.image for s in chunk]).to(device)
        latents.append(vae.encode(pixels).latent_dist.mean.float().cpu())
        ids.append(tok([s.caption for s in chunk], padding="max_length", max_length=model.MAX_TOKENS,
                       truncation=True, return_tensors="pt").input_ids.to(torch.int32))
        objects.append(torch.tensor([len(s.objects) for s in chunk], dtype=torch.int8))
        masks.append(torch.stack([object_masks(s, latents[-1].shape[-1]) for s in chunk]))
        tokens.append(torch.stack([token_objects(s) for s in chunk]))
    latents, objects = torch.cat(latents).contiguous(), torch.cat(objects)
    empty = tok([""], padding="max_length", max_length=model.MAX_TOKENS, return_tensors="pt").input_ids
    out = {"latents": latents, "ids": torch.cat(ids), "objects": objects, "empty_ids": empty.to(torch.int32),
           "masks": torch.cat(masks), "token_objects": torch.cat(tokens),
           "scaling_factor": torch.tensor([1.0 / latents.std().item()])}
    if args.mirror:  # a two-object scene and its twin stand next to each other
        partner = torch.full((len(objects),), -1, dtype=torch.int64)
        starts = torch.nonzero(objects == 2).view(-1)[::2]
        partner[starts], partner[starts + 1] = starts + 1, starts
        out["partner"] = partner
    return out


# ---------------------------------------------------------------- stage 2: UNet + text encoder
class AttentionMaps(list):
    """An ``edit`` for ``CrossAttnProcessor`` that keeps each layer's probs ``[b, head, query, text]`` (with
    their graph, for the grounding loss) and changes nothing."""

    def __call__(self, layer: str, probs: torch.Tensor) -> torch.Tensor:
        self.append(probs)
        return probs


def grounding(regions: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor:
    """The grounding loss (nats, 0-d): the KL divergence of each word's object, ``regions [b, text, h, w]``
    normalised over the cells, from the word's attention map in each of ``maps`` (``[b, head, query, text]``,
    one per layer; head mean, normalised over the queries), at the layer's resolution; the mean over the
    words that name an object and the layers. It pulls the map of "red" onto the red object at every
    timestep."""
    named = regions.flatten(2).sum(-1) > 0  # [b, text]
    words = named.sum().clamp(min=1)
    losses = []
    for probs in maps:
        side = math.isqrt(probs.shape[2])
        target = F.adaptive_avg_pool2d(regions, side).flatten(2)[named]  # [words, query]
        target = target / target.sum(-1, keepdim=True)
        word_map = probs.float().mean(1).transpose(1, 2)[named]  # [words, query]
        word_map = word_map / word_map.sum(-1, keepdim=True)
        losses.append((torch.xlogy(target, target) - target * (word_map + 1e-8).log()).sum() / words)
    return torch.stack(losses).mean()


class Trainer:
    """UNet + text-encoder training on precomputed latents, with every batch drawn on ``device``.

    ``latents [n, 4, h, w]`` (already scaled), ``ids [n, 77]``, ``objects [n]`` (1 or 2 per scene) and
    ``empty_ids [77]`` move to the device once; the scenes (``args.two_share`` of them two-object scenes, or
    the data's own share when None), caption dropout, timesteps and noise are drawn there from a generator
    reseeded with (seed, step), so a step needs no host work and no host sync (``train_step`` returns the loss
    as a tensor) and the batch at step ``s`` is a pure function of (seed, s) on a given device type.
    The recipe is read from ``args`` (``parse_args``): prediction target, timestep sampling, min-SNR
    weighting, lr warm-up and cosine decay to zero at the end of the run, EMA, bf16 autocast, channels-last,
    ``torch.compile``. Under ``torchrun`` (a process group is initialised) each of the W processes draws
    ``batch / W`` samples of its own and the gradients are averaged, with the run's progress, before every
    optimiser step, so every process holds the same weights: on a CPU, W one-thread processes use the cores
    better than one W-thread process.
    """

    def __init__(self, args, comps, device, latents, ids, objects, empty_ids, partner=None, masks=None,
                 token_objects=None):
        self.args, self.comps, self.device = args, comps, device
        self.unet, self.text = comps["unet"].to(device), comps["text_encoder"].to(device)
        if args.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.params = list(self.unet.parameters()) + list(self.text.parameters())
        cuda = device.type == "cuda"
        self.opt = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.01, fused=cuda or None)
        self.ema = [p.detach().clone() for p in self.params]
        self.step, self.elapsed, self.wall, self.log = 0, 0.0, 0.0, []  # seconds: UNet training, whole run
        self.time_done = 0.0  # share of the run's time budget spent, the same in every process
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if args.batch % self.world:
            raise ValueError(f"--batch {args.batch} does not split over {self.world} processes; "
                             f"use a multiple of {self.world}")
        self.local_batch = args.batch // self.world
        self.alphas_cumprod = comps["scheduler"].alphas_cumprod.to(device)
        self.prediction = comps["scheduler"].config.prediction_type
        self.latents = latents.to(device)  # [n, 4, h, w]
        self.ids = ids.to(device, torch.long)  # [n, 77]
        self.empty_ids = empty_ids.to(device, torch.long)  # [77]
        two = objects.to(device) == 2  # [n]
        share = float(two.float().mean()) if args.two_share is None else args.two_share
        n_two, n_one = max(int(two.sum()), 1), max(int((~two).sum()), 1)
        self.weights = torch.where(two, share / n_two, (1 - share) / n_one)  # [n] sampling weight of a scene
        self.partner = None if partner is None else partner.to(device)  # [n] a scene's mirrored twin, or -1
        self.ground = None  # the grounding loss's data: masks [n, 2, h, w], the object of each token [n, 77]
        if args.ground:
            if masks is None or token_objects is None:
                raise ValueError("--ground needs the scenes' object masks, which this latent cache lacks; "
                                 "delete its latents.safetensors to encode the scenes again")
            self.ground = (masks.to(device), token_objects.to(device, torch.long))
            self.maps = AttentionMaps()
            self.unet.set_attn_processor({name: CrossAttnProcessor(name, edit=self.maps)
                                          for name in self.unet.attn_processors})
        self.gen = torch.Generator(device)
        self.bf16 = args.precision == "bf16"
        self.denoise = torch.compile(self.unet) if args.compile else self.unet

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x0 [B, 4, h, w], tokens [B, 77], noise [B, 4, h, w], t [B])`` for the current step, on the
        device."""
        idx, drop, noise, t = self.draw()
        return *self.rows(idx, drop), noise, t

    def rows(self, idx: torch.Tensor, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0 [B, 4, h, w], tokens [B, 77])`` of scenes ``idx``, the captions ``drop`` says left empty."""
        return self.latents[idx], torch.where(drop[:, None], self.empty_ids[None], self.ids[idx])

    def regions(self, idx: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """``[B, 77, h, w]``: for each token of scenes ``idx``, the latent-cell cover of the object its word
        names (zeros for other tokens and for the captions ``drop`` leaves empty)."""
        masks, words = self.ground
        obj = torch.where(drop[:, None], -1, words[idx])  # [B, 77]
        cover = masks[idx].float()  # [B, 2, h, w]
        picked = cover.gather(1, obj.clamp(min=0)[..., None, None].expand(-1, -1, *cover.shape[2:]))
        return picked * (obj >= 0)[..., None, None]

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The current step's random draws: scene rows ``[B]``, caption dropped ``[B]`` (bool), noise
        ``[B, 4, h, w]``, timesteps ``[B]``."""
        a, b = self.args, self.local_batch
        self.gen.manual_seed((a.seed * 1_000_003 + self.step) * self.world + self.rank)
        paired = self.partner is not None  # the second half: the first half's twins, same noise and step
        n = b // 2 if paired else b
        idx = torch.multinomial(self.weights, n, replacement=True, generator=self.gen)
        if paired:
            other = torch.multinomial(self.weights, b - n, replacement=True, generator=self.gen)
            twin = self.partner[idx[: b - n]]
            idx = torch.cat([idx, torch.where(twin >= 0, twin, other)])
        drop = torch.rand(b, generator=self.gen, device=self.device) < CAPTION_DROPOUT
        noise = torch.randn((n, *self.latents.shape[1:]), generator=self.gen, device=self.device)
        noise = torch.cat([noise, noise[: b - n]]) if paired else noise
        n_t = len(self.alphas_cumprod)
        if a.timesteps == "logit-normal":  # most steps in the middle of the schedule, as SD3 trains
            u = torch.randn(b, generator=self.gen, device=self.device)
            t = (torch.sigmoid(u) * n_t).long().clamp(max=n_t - 1)
        else:
            t = torch.randint(a.t_min, n_t, (b,), generator=self.gen, device=self.device)
        if paired:
            t = torch.cat([t[:n], t[: b - n]])
        return idx, drop, noise, t

    def lr_at(self, progress: float) -> float:
        """The learning rate after linear warm-up, cosine-decayed to zero as ``progress`` (0-1) reaches 1."""
        a = self.args
        warm = min(1.0, (self.step + 1) / a.warmup)
        decay = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) if a.decay else 1.0
        return a.lr * warm * decay

    def _all_reduce(self, loss: torch.Tensor, time_done: float) -> torch.Tensor:
        """Average the gradients, the loss and the time spent over the processes (one message)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        extra = [loss.detach().view(1), loss.new_tensor([time_done])]
        flat = torch.cat([g.reshape(-1) for g in grads] + extra)
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g)
            offset += g.numel()
        self.time_done = float(flat[-1])
        return flat[-2]

    def in_sync(self) -> bool:
        """Whether every process holds the first process's weights (always true in one process)."""
        if self.world == 1:
            return True
        mine = torch.cat([p.detach().reshape(-1) for p in self.params])
        first = mine.clone()
        dist.broadcast(first, 0)
        differs = torch.tensor([float(not torch.equal(mine, first))])
        dist.all_reduce(differs)
        return not differs.item()

    # -- one step
    def train_step(self, time_done: float = 0.0) -> torch.Tensor:
        """One optimiser step, ``time_done`` (0-1) of the time budget spent; returns the weighted loss as a
        0-d tensor (no host sync in one process)."""
        idx, drop, noise, t = self.draw()
        regions = None if self.ground is None else self.regions(idx, drop)
        return self.update(self.loss(*self.rows(idx, drop), noise, t, regions), time_done)

    def loss(self, x0: torch.Tensor, tokens: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
             regions: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted denoising loss (0-d) of a batch: latents x0 [b, C, h, w], caption ids [b, text],
        noise like x0, timesteps [b]; epsilon or v target, min-SNR weights. With ``regions [b, text, h, w]``
        (``regions``) it adds ``--ground`` times the grounding loss (``grounding``)."""
        a = self.args
        ac = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        if a.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            states = self.text(tokens)[0]
            pred = self.denoise(xt, t, states, return_dict=False)[0]
        snr = ac.view(-1) / (1 - ac.view(-1))
        x0_weight = torch.clamp(snr, min=a.snr_floor, max=a.min_snr)  # the weight it gives the x0 error
        if self.prediction == "v_prediction":
            target = ac.sqrt() * noise - (1 - ac).sqrt() * x0
            weight = x0_weight / (snr + 1)
        else:
            target = noise
            weight = x0_weight / snr
        denoising = (weight * (pred.float() - target).pow(2).mean(dim=(1, 2, 3))).mean()
        if self.ground is None:
            return denoising
        maps = list(self.maps)  # this forward pass's, with their graph
        self.maps.clear()
        return denoising if regions is None else denoising + a.ground * grounding(regions, maps)

    def update(self, loss: torch.Tensor, time_done: float = 0.0) -> torch.Tensor:
        """Backward ``loss``, average it across processes, clip, step the optimiser at the scheduled lr and
        the EMA; returns the (averaged) loss, detached."""
        a = self.args
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            loss = self._all_reduce(loss, time_done)
        else:
            self.time_done = time_done
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(max(self.step / a.steps, self.time_done))
        self.opt.step()
        decay = min(a.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
        self.step += 1
        return loss.detach()

    # -- state
    def save(self, ckpt: Path) -> None:
        tmp = ckpt / "state.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({f"p{i}": p.detach().cpu().contiguous() for i, p in enumerate(self.params)},
                  str(tmp / "params.safetensors"))
        save_file({f"p{i}": p.cpu().contiguous() for i, p in enumerate(self.ema)},
                  str(tmp / "ema.safetensors"))
        save_optimizer(self.opt, tmp / "optimizer")
        progress = {"step": self.step, "elapsed": self.elapsed, "wall": self.wall, "log": self.log}
        (tmp / "progress.json").write_text(json.dumps(progress))
        if (ckpt / "state").exists():
            shutil.rmtree(ckpt / "state")
        os.replace(tmp, ckpt / "state")

    def load(self, ckpt: Path) -> bool:
        d = ckpt / "state"
        if not (d / "progress.json").exists():
            return False
        params, ema = load_file(str(d / "params.safetensors")), load_file(str(d / "ema.safetensors"))
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(params[f"p{i}"])
                self.ema[i].copy_(ema[f"p{i}"])
        load_optimizer(self.opt, d / "optimizer")
        prog = json.loads((d / "progress.json").read_text())
        self.step, self.elapsed, self.wall, self.log = (prog[k] for k in ("step", "elapsed", "wall", "log"))
        return True

    def start_from(self, other: Path) -> None:
        """Start every weight (and its EMA) from the EMA weights of the run checkpointed in ``other``, matched
        by name. A text-encoder layer ``other`` lacks starts as the identity (its attention output and MLP
        output projections zeroed, so the encoder computes what ``other``'s did); any other difference
        (UNet widths, image size) raises."""
        recipe = json.loads((other / "training_log.json").read_text())["recipe"]
        channels = tuple(recipe["channels"]) if recipe["channels"] else None
        old = model.build_components(0, recipe["image_size"], recipe["text_layers"], channels)
        names = ([f"unet.{n}" for n, _ in old["unet"].named_parameters()]
                 + [f"text.{n}" for n, _ in old["text_encoder"].named_parameters()])
        ema = load_file(str(other / "state" / "ema.safetensors"))
        saved = {name: ema[f"p{i}"] for i, name in enumerate(names)}
        mine = ([(f"unet.{n}", p) for n, p in self.unet.named_parameters()]
                + [(f"text.{n}", p) for n, p in self.text.named_parameters()])
        with torch.no_grad():
            for i, (name, p) in enumerate(mine):
                if name in saved and saved[name].shape == p.shape:
                    p.copy_(saved[name])
                elif "encoder.layers." in name and name.startswith("text."):
                    if name.endswith(("self_attn.out_proj.weight", "self_attn.out_proj.bias",
                                      "mlp.fc2.weight", "mlp.fc2.bias")):
                        p.zero_()
                else:
                    raise ValueError(f"--init-from {other}: its model has no {name} of shape "
                                     f"{tuple(p.shape)}; only text-encoder layers can be added")
                self.ema[i].copy_(p)

    def ema_pipeline(self):
        """A pipeline (on the CPU) whose UNet and text encoder hold the EMA weights."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet, text = copy.deepcopy(self.unet).cpu(), copy.deepcopy(self.text).cpu()
        unet.set_attn_processor(AttnProcessor2_0())  # the grounding loss's processors would keep every map
        n = len(list(self.unet.parameters()))
        with torch.no_grad():
            for p, e in zip(list(unet.parameters()) + list(text.parameters()), self.ema[:n] + self.ema[n:]):
                p.copy_(e)
        comps = dict(self.comps, unet=unet, text_encoder=text, vae=self.comps["vae"].cpu())
        pipe = model.assemble(comps)
        self.comps["vae"].to(self.device)
        return pipe

    def ship(self, weights: Path, ckpt: Path) -> None:
        pipe = self.ema_pipeline()
        snap = ckpt / "snapshots" / f"step_{self.step:06d}"
        pipe.save_pretrained(snap)
        for config in snap.glob("*/config.json"):  # a part loaded from_pretrained records the run's folder
            keys = json.loads(config.read_text())
            if keys.pop("_name_or_path", None) is not None:
                config.write_text(json.dumps(keys, indent=2, sort_keys=True) + "\n")
        weights.mkdir(parents=True, exist_ok=True)
        for item in sorted(snap.iterdir()):  # replace the shipped model part by part; keep TRAINING.md
            dest = weights / item.name
            if dest.is_dir():
                shutil.rmtree(dest)
            shutil.copytree(item, dest) if item.is_dir() else shutil.copy2(item, dest)
        log = json.dumps(self.summary(), indent=1)
        for folder in (weights, ckpt):  # the checkpoint's copy lets another run start --init-from it
            (folder / "training_log.json").write_text(log)

    def summary(self) -> dict:
        """The recipe (every option of the run) and the facts of the run, for ``training_log.json``."""
        a = self.args
        recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
                  if k not in ("ckpt", "weights", "device", "threads")}
        return {
            "recipe": dict(recipe, caption_dropout=CAPTION_DROPOUT, prediction=self.prediction),
            "device": self.device.type, "threads": torch.get_num_threads(), "processes": self.world,
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "wall_minutes": round(self.wall / 60, 1), "unet_minutes": round(self.elapsed / 60, 1),
            "step": self.step, "batch": a.batch, "samples_seen": self.step * a.batch,
            "samples_per_second": round(self.step * a.batch / max(self.elapsed, 1e-9), 1),
            "loss_curve": self.log,
        }


def train_student_model(folder: str | os.PathLike, minutes: float = 8.5, seed: int = 0):
    """Train a classroom model of your own on this computer's CPU and return it as a pipeline.

    The "student" preset: the shipped model's VAE, 16,000 new scenes (half a minute to encode), then
    ``minutes`` of UNet training on single-object scenes with a progress bar (8.5 minutes, about 9 in all on
    two cores; two objects need the shipped model's hour). ``folder`` keeps
    the checkpoint: calling again with the same folder resumes, and a finished run loads at once.
    """
    folder = Path(folder)
    main(["--preset", "student", "--device", "cpu", "--max-minutes", str(minutes), "--seed", str(seed),
          "--ckpt", str(folder / "ckpt"), "--weights", str(folder / "model")])
    return model.load_pipeline(folder / "model")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m diffviz.classroom.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named recipe; options given on the command line override it")
    p.add_argument("--ckpt", type=Path, default=Path("classroom_ckpt"), help="resumable state (git-ignored)")
    p.add_argument("--weights", type=Path, default=model.WEIGHTS, help="where the shipped model is written")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=model.TRAIN_SIZE, help="image side in pixels (32 or 64)")
    p.add_argument("--init-vae", type=Path, default=None,
                   help="start the VAE stage from this AutoencoderKL folder (e.g. a shipped model's vae/)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="a checkpoint folder of another run: start the UNet and text encoder from its EMA "
                        "weights (text-encoder layers it lacks start as the identity)")
    p.add_argument("--vae-steps", type=int, default=1500, help="0 with --init-vae: reuse that VAE as it is")
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--n-scenes", type=int, default=100_000)
    p.add_argument("--two-share", type=float, default=None,
                   help="share of two-object scenes in a batch (default: the data's, 0.6)")
    p.add_argument("--plain", type=float, default=0.0,
                   help="share of two-object scenes laid out plainly (data.plain_boxes): the relation alone "
                        "places the objects")
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=False,
                   help="pair each two-object scene with its mirror image captioned with the opposite "
                        "relation (same noise and timestep), half of every batch")
    p.add_argument("--text-layers", type=int, default=0,
                   help="causal self-attention layers in the text encoder")
    p.add_argument("--channels", type=lambda v: tuple(int(c) for c in v.split(",")), default=None,
                   help="UNet channels per level, e.g. 64,128 (default: model.unet_config)")
    p.add_argument("--prediction", choices=("epsilon", "v_prediction"), default="epsilon")
    p.add_argument("--timesteps", choices=("uniform", "logit-normal"), default="uniform",
                   help="how training timesteps are drawn")
    p.add_argument("--t-min", type=int, default=0,
                   help="the least timestep trained (uniform timesteps): 700 trains only the noisiest "
                        "steps, where the layout is decided")
    p.add_argument("--min-snr", type=float, default=MIN_SNR_GAMMA, help="min-SNR loss weighting's gamma")
    p.add_argument("--snr-floor", type=float, default=0.0,
                   help="the least weight of a step's x0 error (min-SNR gives SNR, ~0.005 at the noisiest "
                        "step, where the layout is decided)")
    p.add_argument("--ground", type=float, default=0.0,
                   help="weight of the grounding loss: the KL divergence of each colour, size and shape "
                        "word's object mask from the word's attention map, every layer (0: off, plain "
                        "denoising)")
    p.add_argument("--ema", type=float, default=EMA_DECAY, help="EMA decay (warmed up as (1+s)/(10+s))")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--decay", action=argparse.BooleanOptionalAction, default=False,
                   help="cosine-decay the lr to zero at --steps or --max-minutes, whichever comes first")
    p.add_argument("--steps", type=int, default=1_000_000, help="UNet steps in total (across resumes)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="UNet training minutes in total (across resumes): stop and ship then")
    p.add_argument("--ship-every", type=float, default=12.0, help="minutes between shipped models/snapshots")
    p.add_argument("--save-every", type=float, default=4.0, help="minutes between resumable checkpoints")
    p.add_argument("--log-every", type=int, default=50,
                   help="steps per logged mean loss (one host sync each)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="bf16 autocast (default: on CUDA; on a CPU only when asked)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the UNet (default: on CUDA only)")
    args = p.parse_args(argv)
    if args.preset:
        p.set_defaults(**PRESETS[args.preset])
        args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.compile is None:
        args.compile = cuda
    if args.precision is None:
        args.precision = "bf16" if cuda else "fp32"
    return args


def main(argv=None) -> Path:
    """Train (or resume) as ``argv`` says; returns the folder the model is shipped to."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # started by torchrun
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    follower = dist.is_initialized() and dist.get_rank() > 0
    if follower:  # the first process trains the VAE and encodes the latents; the others then read them
        dist.barrier()
    elif dist.is_initialized():
        torch.set_num_threads(os.cpu_count() or 1)  # torchrun starts each process with one thread
    start = time.time()
    ckpt = args.ckpt
    ckpt.mkdir(parents=True, exist_ok=True)
    if not follower:
        (ckpt / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    comps = model.build_components(args.seed, args.image_size, args.text_layers, args.channels,
                                   args.prediction)

    from diffusers import AutoencoderKL

    if (ckpt / "vae" / "config.json").exists():
        comps["vae"] = AutoencoderKL.from_pretrained(ckpt / "vae")
        print(f"vae: resumed from {ckpt / 'vae'}", flush=True)
    else:
        if args.init_vae is not None:
            comps["vae"] = AutoencoderKL.from_pretrained(args.init_vae)
            comps["vae"].register_to_config(sample_size=args.image_size)
        t0 = time.time()
        train_vae(comps["vae"], args, device)
        comps["vae"].to("cpu").save_pretrained(ckpt / "vae")
        (ckpt / "vae_time.json").write_text(json.dumps({"seconds": time.time() - t0}))
    vae = comps["vae"].to(device).eval().requires_grad_(False)

    cache = ckpt / "latents.safetensors"
    if cache.exists():
        pre = load_file(str(cache))
    else:
        pre = precompute(vae, args, device, data.benchmark_exclusions())
        save_file(pre, str(cache))
    if dist.is_initialized() and not follower:
        dist.barrier()
    if args.threads:  # after the VAE and latents stages, which one process runs on every core
        torch.set_num_threads(args.threads)
    vae.register_to_config(scaling_factor=float(pre["scaling_factor"]))

    trainer = Trainer(args, comps, device, pre["latents"] * pre["scaling_factor"], pre["ids"], pre["objects"],
                      pre["empty_ids"][0], pre.get("partner"), pre.get("masks"), pre.get("token_objects"))
    budget = 60 * args.max_minutes if args.max_minutes is not None else math.inf
    if trainer.load(ckpt):
        print(f"unet: resumed at step {trainer.step}", flush=True)
    elif args.init_from is not None:
        trainer.start_from(args.init_from)
        print(f"unet: started from {args.init_from}'s weights", flush=True)
    trainer.time_done = trainer.elapsed / budget
    trainer.wall += time.time() - start  # the VAE and latents stages of this process
    lead = trainer.rank == 0  # the process that logs, saves and ships
    timed = budget < math.inf
    bar = tqdm(total=round(budget) if timed else args.steps,
               initial=round(trainer.elapsed) if timed else trainer.step, unit="s" if timed else "step",
               desc="unet", mininterval=5, file=sys.stdout, disable=not lead)
    last_save = last_ship = time.time()
    window: list[torch.Tensor] = []
    tick = time.time()

    def step() -> None:
        window.append(trainer.train_step((trainer.elapsed + time.time() - tick) / budget))
        if timed:  # the bar counts UNet seconds in a timed run, steps otherwise
            bar.n = min(bar.total, round(trainer.elapsed + time.time() - tick))
        bar.update(0 if timed else 1)

    if args.compile and trainer.step < args.steps and trainer.time_done < 1:  # the first step compiles
        try:
            step()
        except Exception as err:  # noqa: BLE001  (inductor and triton raise many kinds)
            print(f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); training eagerly",
                  flush=True)
            trainer.denoise = trainer.unet
    # every process sees the same step and time_done, so all stop together; a finished run resumes to nothing
    while trainer.step < args.steps and trainer.time_done < 1:
        step()
        now = time.time()
        if len(window) == args.log_every:
            loss = torch.stack(window).mean().item()  # the only host sync of the loop
            window = []
            trainer.elapsed += now - tick
            trainer.wall += now - tick
            tick = now
            trainer.log.append([trainer.step, round(loss, 5), round(trainer.elapsed, 1)])
            bar.set_postfix(loss=f"{loss:.4f}")
        last = trainer.time_done >= 1 or trainer.step == args.steps
        if now - last_ship > 60 * args.ship_every or last or now - last_save > 60 * args.save_every:
            trainer.elapsed += now - tick
            trainer.wall += now - tick
            if lead:
                trainer.save(ckpt)
            if lead and (now - last_ship > 60 * args.ship_every or last):
                trainer.ship(args.weights, ckpt)
                last_ship = time.time()
                print(f"\nshipped step {trainer.step} to {args.weights}", flush=True)
            last_save = tick = time.time()
    bar.close()
    if not trainer.in_sync():
        raise RuntimeError("the training processes hold different weights; report this as a bug")
    if dist.is_initialized():
        dist.barrier()  # every process is done with gloo before any tears its connections down
        dist.destroy_process_group()
    if lead:
        print(f"done at step {trainer.step}; {trainer.elapsed / 60:.1f} min of UNet training", flush=True)
    return args.weights


if __name__ == "__main__":
    main()
