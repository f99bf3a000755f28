"""Training throughput of the classroom model: the v1 step (batches built on the host) against ``Trainer``.

    python benchmarks/classroom_train_speed.py [--device cuda] [--image-size 64] [--batch 512] [--steps 20]

Every variant trains the same fresh model on the same synthetic data (random latents of the VAE's shape,
random captions from the classroom grammar), in interleaved rounds whose order is shuffled per round; each
round runs ``--steps`` steps after a warm-up (where ``torch.compile`` compiles) and ends with a device sync.
Prints samples/s (min / median / max over rounds) and the median ratio against the v1 step.

- ``v1 step``: the step shipped with v1, kept here as the baseline: a ``randperm`` over the whole set on the
  host every step, host-side indexing, noise and timesteps drawn on the CPU, fp32, ``loss.item()`` per step.
- ``Trainer``: batches, noise and timesteps drawn on the device, no host sync per step (fp32).
- on CUDA also ``Trainer bf16`` (autocast + TF32 + fused AdamW) and ``Trainer bf16+compile``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffviz.classroom import data, model  # noqa: E402
from diffviz.classroom.train import CAPTION_DROPOUT, EMA_DECAY, MIN_SNR_GAMMA, Trainer  # noqa: E402


def synthetic_data(n: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(latents [n, 4, s/4, s/4], ids [n, 77] int32, empty_ids [77] int32)`` with real classroom captions."""
    tok = model.tokenizer()
    captions = [s.caption for s in data.scenes(0, min(n, 2048), image_size=image_size)]
    ids = tok([captions[i % len(captions)] for i in range(n)], padding="max_length", max_length=model.MAX_TOKENS,
              return_tensors="pt").input_ids.to(torch.int32)
    empty = tok([""], padding="max_length", max_length=model.MAX_TOKENS, return_tensors="pt").input_ids[0]
    side = image_size // 4
    return torch.randn(n, 4, side, side, generator=torch.Generator().manual_seed(0)), ids, empty.to(torch.int32)


def v1_step(tr: Trainer, ids_host: torch.Tensor) -> float:
    """One step exactly as v1 trained (host batches, CPU randomness, fp32, a sync per step)."""
    a, n = tr.args, len(tr.latents)
    g = torch.Generator().manual_seed(a.seed * 1_000_003 + tr.step)
    epoch, offset = divmod(tr.step * a.batch, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed * 7919 + epoch))
    idx = perm[torch.arange(offset, offset + a.batch) % n]
    x0 = tr.latents[idx.to(tr.device)]
    tokens = ids_host[idx].long()
    drop = torch.rand(a.batch, generator=g) < CAPTION_DROPOUT
    tokens[drop] = tr.empty_ids.cpu()
    noise = torch.randn(x0.shape, generator=g).to(tr.device)
    t = torch.randint(0, len(tr.alphas_cumprod), (a.batch,), generator=g).to(tr.device)
    ac = tr.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    pred = tr.unet(xt, t, tr.text(tokens.to(tr.device))[0]).sample
    snr = ac.view(-1) / (1 - ac.view(-1))
    loss = (torch.clamp(snr, max=MIN_SNR_GAMMA) / snr * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
    tr.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(tr.params, 1.0)
    tr.opt.step()
    decay = min(EMA_DECAY, (1 + tr.step) / (10 + tr.step))
    with torch.no_grad():
        torch._foreach_lerp_(tr.ema, [p.detach() for p in tr.params], 1 - decay)
    tr.step += 1
    return loss.item()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--image-size", type=int, default=model.TRAIN_SIZE)
    ap.add_argument("--batch", type=int, default=None, help="default: 512 on CUDA, 64 on the CPU")
    ap.add_argument("--n", type=int, default=20_000, help="synthetic training set size")
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default: 20 on CUDA, 3 on the CPU)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 10 on CUDA, 1 on CPU)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (512 if cuda else 64)
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    latents, ids, empty = synthetic_data(args.n, args.image_size)

    variants = {"v1 step": ("fp32", False, True), "Trainer": ("fp32", False, False)}
    if cuda:
        variants |= {"Trainer bf16": ("bf16", False, False), "Trainer bf16+compile": ("bf16", True, False)}
    trainers, runs = {}, {}
    for name, (precision, compile_, _) in variants.items():
        targs = SimpleNamespace(seed=0, batch=batch, lr=5e-4, warmup=500, precision=precision, compile=compile_)
        comps = model.build_components(0, args.image_size)
        trainers[name] = Trainer(targs, comps, device, latents, ids, empty)

        def run(k: int, tr=trainers[name], v1=variants[name][2]):
            for _ in range(k):
                v1_step(tr, ids) if v1 else tr.train_step()
            if cuda:
                torch.cuda.synchronize()

        runs[name] = run
        t0 = time.perf_counter()
        run(warmup)
        print(f"{name}: warm-up {warmup} steps in {time.perf_counter() - t0:.1f} s", flush=True)

    rates: dict[str, list[float]] = {name: [] for name in variants}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            runs[name](steps)
            rates[name].append(steps * batch / (time.perf_counter() - t0))
    base = statistics.median(rates["v1 step"])
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} torch thread(s)"
    print(f"\nclassroom training, {args.image_size}x{args.image_size} images, batch {batch}, {where}")
    print(f"{'variant':<22} {'samples/s min / median / max':>32} {'vs v1':>8}")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:<22} {min(r):>10.0f} / {med:>8.0f} / {max(r):>8.0f} {med / base:>7.2f}x")
    return {name: statistics.median(r) for name, r in rates.items()}


if __name__ == "__main__":
    main()
