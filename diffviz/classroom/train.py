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
    """Reconstruction (MSE) + 1e-6 KL on freshly drawn ``args.image_size`` scenes; cosine lr decay to 5%."""
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    bar = tqdm(range(args.vae_steps), desc="vae", mininterval=2, file=sys.stdout)
    for step in bar:
        scenes = data.scenes(args.seed * 1_000_003 + 7 + step, args.vae_batch, image_size=args.image_size)
        x = _images(scenes).to(device)
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


@torch.no_grad()
def precompute(vae, args, device, exclude, progress: bool = True) -> dict:
    """Latents ``[n, 4, s/4, s/4]`` (VAE mean) and token ids ``[n, 77]`` of ``data.scenes(seed, n)``, streamed;
    ``progress`` shows a bar."""
    tok = model.tokenizer()
    rng = np.random.default_rng(args.seed)  # the same scenes, in the same order, as data.scenes(args.seed, ...)
    latents, ids = [], []
    for start in tqdm(range(0, args.n_scenes, 512), desc="latents", mininterval=5, file=sys.stdout,
                      disable=not progress):
        chunk = [data.random_scene(rng, exclude, args.image_size) for _ in range(min(512, args.n_scenes - start))]
        latents.append(vae.encode(_images(chunk).to(device)).latent_dist.mean.float().cpu())
        ids.append(tok([s.caption for s in chunk], padding="max_length", max_length=model.MAX_TOKENS,
                       truncation=True, return_tensors="pt").input_ids.to(torch.int32))
    latents = torch.cat(latents).contiguous()
    empty = tok([""], padding="max_length", max_length=model.MAX_TOKENS, return_tensors="pt").input_ids
    return {"latents": latents, "ids": torch.cat(ids), "empty_ids": empty.to(torch.int32),
            "scaling_factor": torch.tensor([1.0 / latents.std().item()])}


# ---------------------------------------------------------------- stage 2: UNet + text encoder
class Trainer:
    """UNet + text-embedding training on precomputed latents, with every batch drawn on ``device``.

    ``latents [n, 4, h, w]`` (already scaled), ``ids [n, 77]`` and ``empty_ids [77]`` move to the device once;
    the shuffle, caption dropout, timesteps and noise are drawn there from a generator reseeded with
    (seed, step), so a step needs no host work and no host sync (``train_step`` returns the loss as a tensor).
    The batch at step ``s`` is a pure function of (seed, s) on a given device type. On CUDA: bf16 autocast,
    TF32 matmuls, fused AdamW and, with ``args.compile``, a ``torch.compile``d UNet.
    """

    def __init__(self, args, comps, device, latents, ids, empty_ids):
        self.args, self.comps, self.device = args, comps, device
        self.unet, self.text = comps["unet"].to(device), comps["text_encoder"].to(device)
        self.params = list(self.unet.parameters()) + list(self.text.parameters())
        cuda = device.type == "cuda"
        self.opt = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.01, fused=cuda or None)
        self.ema = [p.detach().clone() for p in self.params]
        self.step, self.elapsed, self.log = 0, 0.0, []
        self.alphas_cumprod = comps["scheduler"].alphas_cumprod.to(device)
        self.latents = latents.to(device)  # [n, 4, h, w]
        self.ids = ids.to(device, torch.long)  # [n, 77]
        self.empty_ids = empty_ids.to(device, torch.long)  # [77]
        self.gen = torch.Generator(device)
        self._perm_epoch, self._perm = -1, None
        self.bf16 = cuda and args.precision == "bf16"
        self.denoise = torch.compile(self.unet) if args.compile else self.unet

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            self.gen.manual_seed(self.args.seed * 7919 + epoch)
            self._perm = torch.randperm(len(self.latents), generator=self.gen, device=self.device)
            self._perm_epoch = epoch
        return self._perm

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x0 [B, 4, h, w], tokens [B, 77], noise [B, 4, h, w], t [B])`` for the current step, on the device."""
        a, n = self.args, len(self.latents)
        epoch, offset = divmod(self.step * a.batch, n)
        idx = self._permutation(epoch)[(offset + torch.arange(a.batch, device=self.device)) % n]
        self.gen.manual_seed(a.seed * 1_000_003 + self.step)
        drop = torch.rand(a.batch, generator=self.gen, device=self.device) < CAPTION_DROPOUT
        tokens = torch.where(drop[:, None], self.empty_ids[None], self.ids[idx])
        x0 = self.latents[idx]
        noise = torch.randn(x0.shape, generator=self.gen, device=self.device)
        t = torch.randint(0, len(self.alphas_cumprod), (a.batch,), generator=self.gen, device=self.device)
        return x0, tokens, noise, t

    # -- one step
    def train_step(self) -> torch.Tensor:
        """One optimiser step; returns the min-SNR-weighted loss as a 0-d tensor (no host sync)."""
        a = self.args
        x0, tokens, noise, t = self.batch()
        ac = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            states = self.text(tokens)[0]
            pred = self.denoise(xt, t, states, return_dict=False)[0]
        snr = ac.view(-1) / (1 - ac.view(-1))
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
        loss = (weight * (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))).mean()
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
        return loss.detach()

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
            "image_size": a.image_size, "precision": "bf16" if self.bf16 else "fp32", "compiled": bool(a.compile),
            "samples_per_second": round(self.step * a.batch / max(self.elapsed, 1e-9), 1),
            "hardware": f"{self.device.type}, {torch.get_num_threads()} torch thread(s), {platform.processor() or platform.machine()}",
            "loss_curve": self.log,
        }


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m diffviz.classroom.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, default=Path("classroom_ckpt"), help="resumable state (git-ignored)")
    p.add_argument("--weights", type=Path, default=model.WEIGHTS, help="where the shipped model is written")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=model.TRAIN_SIZE, help="image side in pixels (64 or 32)")
    p.add_argument("--init-vae", type=Path, default=None,
                   help="start the VAE stage from this AutoencoderKL folder (e.g. a shipped model's vae/)")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--n-scenes", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--steps", type=int, default=1_000_000, help="UNet steps in total (across resumes)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and ship) after this much wall time")
    p.add_argument("--ship-every", type=float, default=12.0, help="minutes between shipped models/snapshots")
    p.add_argument("--save-every", type=float, default=4.0, help="minutes between resumable checkpoints")
    p.add_argument("--log-every", type=int, default=50, help="steps per logged mean loss (one host sync each)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast on CUDA (CPU: fp32)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the UNet (default: on CUDA only)")
    args = p.parse_args(argv)
    if args.compile is None:
        args.compile = args.device.startswith("cuda")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.time()
    ckpt = args.ckpt
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    comps = model.build_components(args.seed, args.image_size)

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
    vae.register_to_config(scaling_factor=float(pre["scaling_factor"]))

    trainer = Trainer(args, comps, device, pre["latents"] * pre["scaling_factor"], pre["ids"], pre["empty_ids"][0])
    if trainer.load(ckpt):
        print(f"unet: resumed at step {trainer.step}", flush=True)
    bar = tqdm(total=args.steps, initial=trainer.step, desc="unet", mininterval=5, file=sys.stdout)
    last_save = last_ship = time.time()
    window: list[torch.Tensor] = []
    tick = time.time()
    if args.compile and trainer.step < args.steps:  # the first step compiles; a failure must not end a GPU run
        try:
            window.append(trainer.train_step())
            bar.update(1)
        except Exception as err:  # noqa: BLE001  (inductor and triton raise many kinds)
            print(f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); training eagerly", flush=True)
            trainer.denoise = trainer.unet
    while trainer.step < args.steps:
        window.append(trainer.train_step())
        bar.update(1)
        if len(window) == args.log_every:
            loss = torch.stack(window).mean().item()  # the only host sync of the loop
            window = []
            now = time.time()
            trainer.elapsed += now - tick
            tick = now
            trainer.log.append([trainer.step, round(loss, 5), round(trainer.elapsed, 1)])
            bar.set_postfix(loss=f"{loss:.4f}")
        now = time.time()
        out_of_time = args.max_minutes is not None and now - start > 60 * args.max_minutes
        if now - last_ship > 60 * args.ship_every or out_of_time or trainer.step == args.steps:
            trainer.elapsed += time.time() - tick
            trainer.save(ckpt)
            trainer.ship(args.weights, ckpt)
            last_save = last_ship = tick = time.time()
            print(f"\nshipped step {trainer.step} to {args.weights}", flush=True)
        elif now - last_save > 60 * args.save_every:
            trainer.elapsed += time.time() - tick
            trainer.save(ckpt)
            last_save = tick = time.time()
        if out_of_time:
            break
    bar.close()
    print(f"done at step {trainer.step}; {trainer.elapsed / 60:.1f} min of UNet training", flush=True)


if __name__ == "__main__":
    main()
