"""Train the classroom model: ``python -m diffviz.classroom.train [--device cuda] [--max-minutes 100]``.

Two stages, both seeded and resumable from ``--ckpt`` (safetensors + JSON only):
1. the VAE alone on freshly drawn scenes (short);
2. the latents of ``--n-scenes`` scenes are precomputed once, then the UNet and the text encoder
   (embeddings only) are trained together on plain denoising (epsilon, min-SNR weighting, 10% caption
   dropout for classifier-free guidance, EMA weights). No loss touches the attention maps.

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
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import data, model

CAPTION_DROPOUT = 0.1
EMA_DECAY = 0.999
MIN_SNR_GAMMA = 5.0


def _images(scenes: list[data.Scene]) -> torch.Tensor:
    """``[B, 3, H, W]`` float in [-1, 1]."""
    x = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


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
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    bar = tqdm(range(args.vae_steps), desc="vae", mininterval=2, file=sys.stdout)
    running = None
    for step in bar:
        x = _images(data.scenes(args.seed * 1_000_003 + 7 + step, args.vae_batch)).to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:  # cosine decay to 5% over the stage
            g["lr"] = 1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / args.vae_steps)))
        running = rec_loss.item() if running is None else 0.95 * running + 0.05 * rec_loss.item()
        bar.set_postfix(mse=f"{running:.5f}")
    vae.eval()


@torch.no_grad()
def precompute(vae, args, device, exclude) -> dict:
    tok = model.tokenizer()
    scenes = data.scenes(args.seed, args.n_scenes, exclude)
    latents, ids = [], []
    for i in tqdm(range(0, len(scenes), 256), desc="latents", mininterval=5, file=sys.stdout):
        chunk = scenes[i : i + 256]
        latents.append(vae.encode(_images(chunk).to(device)).latent_dist.mean.cpu())
        ids.append(tok([s.caption for s in chunk], padding="max_length", max_length=model.MAX_TOKENS,
                       truncation=True, return_tensors="pt").input_ids.to(torch.int32))
    latents = torch.cat(latents).contiguous()
    empty = tok([""], padding="max_length", max_length=model.MAX_TOKENS, return_tensors="pt").input_ids
    return {"latents": latents, "ids": torch.cat(ids), "empty_ids": empty.to(torch.int32),
            "scaling_factor": torch.tensor([1.0 / latents.std().item()])}


# ---------------------------------------------------------------- stage 2: UNet + text encoder
class Trainer:
    def __init__(self, args, comps, device):
        self.args, self.comps, self.device = args, comps, device
        self.unet, self.text = comps["unet"].to(device), comps["text_encoder"].to(device)
        self.params = list(self.unet.parameters()) + list(self.text.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.01)
        self.ema = [p.detach().clone() for p in self.params]
        self.step, self.elapsed, self.log = 0, 0.0, []
        sched = comps["scheduler"]
        self.alphas_cumprod = sched.alphas_cumprod.to(device)

    # -- state
    def save(self, ckpt: Path) -> None:
        tmp = ckpt / "state.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({f"p{i}": p.detach().cpu().contiguous() for i, p in enumerate(self.params)}, str(tmp / "params.safetensors"))
        save_file({f"p{i}": p.cpu().contiguous() for i, p in enumerate(self.ema)}, str(tmp / "ema.safetensors"))
        save_optimizer(self.opt, tmp / "optimizer")
        (tmp / "progress.json").write_text(json.dumps({"step": self.step, "elapsed": self.elapsed, "log": self.log}))
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
        self.step, self.elapsed, self.log = prog["step"], prog["elapsed"], prog["log"]
        return True

    def ema_pipeline(self):
        """A pipeline (on the CPU) whose UNet and text encoder hold the EMA weights."""
        unet, text = copy.deepcopy(self.unet).cpu(), copy.deepcopy(self.text).cpu()
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
        weights.mkdir(parents=True, exist_ok=True)
        for item in sorted(snap.iterdir()):  # replace the shipped model part by part; keep TRAINING.md
            dest = weights / item.name
            if dest.is_dir():
                shutil.rmtree(dest)
            shutil.copytree(item, dest) if item.is_dir() else shutil.copy2(item, dest)
        (weights / "training_log.json").write_text(json.dumps(self.summary(), indent=1))

    def summary(self) -> dict:
        a = self.args
        return {
            "step": self.step, "batch": a.batch, "lr": a.lr, "seed": a.seed, "n_scenes": a.n_scenes,
            "vae_steps": a.vae_steps, "vae_batch": a.vae_batch, "caption_dropout": CAPTION_DROPOUT,
            "ema_decay": EMA_DECAY, "min_snr_gamma": MIN_SNR_GAMMA, "unet_train_seconds": round(self.elapsed, 1),
            "hardware": f"{self.device.type}, {torch.get_num_threads()} torch thread(s), {platform.processor() or platform.machine()}",
            "loss_curve": self.log,
        }

    # -- one step
    def train_step(self, latents, ids, empty_ids) -> float:
        a, n = self.args, latents.shape[0]
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + self.step)
        epoch, offset = divmod(self.step * a.batch, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed * 7919 + epoch))
        idx = perm[torch.arange(offset, offset + a.batch) % n]
        x0 = latents[idx].to(self.device)
        tokens = ids[idx].long()
        drop = torch.rand(a.batch, generator=g) < CAPTION_DROPOUT
        tokens[drop] = empty_ids.long()
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        t = torch.randint(0, len(self.alphas_cumprod), (a.batch,), generator=g).to(self.device)
        ac = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        states = self.text(tokens.to(self.device))[0]
        pred = self.unet(xt, t, states).sample
        snr = ac.view(-1) / (1 - ac.view(-1))
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        for group in self.opt.param_groups:
            group["lr"] = a.lr * min(1.0, (self.step + 1) / a.warmup)
        self.opt.step()
        decay = min(EMA_DECAY, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
        self.step += 1
        return loss.item()


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m diffviz.classroom.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, default=Path("classroom_ckpt"), help="resumable state (git-ignored)")
    p.add_argument("--weights", type=Path, default=model.WEIGHTS, help="where the shipped model is written")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--n-scenes", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--steps", type=int, default=1_000_000, help="UNet steps in total (across resumes)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and ship) after this much wall time")
    p.add_argument("--ship-every", type=float, default=12.0, help="minutes between shipped models/snapshots")
    p.add_argument("--save-every", type=float, default=4.0, help="minutes between resumable checkpoints")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.time()
    ckpt = args.ckpt
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    comps = model.build_components(args.seed)

    from diffusers import AutoencoderKL

    if (ckpt / "vae" / "config.json").exists():
        comps["vae"] = AutoencoderKL.from_pretrained(ckpt / "vae")
        print(f"vae: resumed from {ckpt / 'vae'}", flush=True)
    else:
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
    vae.register_to_config(scaling_factor=float(pre["scaling_factor"]))
    latents = (pre["latents"] * pre["scaling_factor"]).to(device)
    ids, empty_ids = pre["ids"], pre["empty_ids"][0]

    trainer = Trainer(args, comps, device)
    if trainer.load(ckpt):
        print(f"unet: resumed at step {trainer.step}", flush=True)
    bar = tqdm(total=args.steps, initial=trainer.step, desc="unet", mininterval=5, file=sys.stdout)
    last_save = last_ship = time.time()
    window: list[float] = []
    tick = time.time()
    while trainer.step < args.steps:
        window.append(trainer.train_step(latents, ids, empty_ids))
        bar.update(1)
        now = time.time()
        trainer.elapsed += now - tick
        tick = now
        if len(window) == 50:
            loss = sum(window) / len(window)
            trainer.log.append([trainer.step, round(loss, 5), round(trainer.elapsed, 1)])
            bar.set_postfix(loss=f"{loss:.4f}")
            window = []
        out_of_time = args.max_minutes is not None and now - start > 60 * args.max_minutes
        if now - last_ship > 60 * args.ship_every or out_of_time or trainer.step == args.steps:
            trainer.save(ckpt)
            trainer.ship(args.weights, ckpt)
            last_save = last_ship = time.time()
            print(f"\nshipped step {trainer.step} to {args.weights}", flush=True)
        elif now - last_save > 60 * args.save_every:
            trainer.save(ckpt)
            last_save = time.time()
        if out_of_time:
            break
        tick = time.time()
    bar.close()
    print(f"done at step {trainer.step}; {trainer.elapsed / 60:.1f} min of UNet training", flush=True)


if __name__ == "__main__":
    main()
