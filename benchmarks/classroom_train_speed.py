"""Training throughput of the classroom model on this machine: a table of samples/s per setting.

    python benchmarks/classroom_train_speed.py [--image-size 32] [--steps 3] [--rounds 3] [--quick]
    python benchmarks/classroom_train_speed.py --device cuda --batch 1024 --image-size 64   # a lent GPU

Run it with nothing else on the machine. Every variant trains the same fresh model on the same synthetic data
(random latents of the VAE's shape, real classroom captions), in interleaved rounds whose order is shuffled
per round; a round runs ``--steps`` steps after a warm-up (where ``torch.compile`` compiles). Prints samples/s
(min / median / max over rounds), the ratio to v1's step (one torch thread, eager, batch 64: how v1 was
trained), the machine's fp32 matmul GFLOP/s at 1 and 2 threads, the model's FLOPs per training sample and so
the share of the machine's matmul peak that a step uses. Variants:

- ``v1 step``: the baseline, the step v1 shipped with: host-side ``randperm`` and indexing, CPU noise, fp32,
  ``loss.item()`` every step; 1 thread, batch 64.
- ``Trainer``: batches drawn on the device, no host sync per step; threads x batch x channels-last x bf16
  autocast x ``torch.compile`` (inductor's CPU backend).
- ``2 processes x 1 thread``: two independent trainers side by side (what a recipe search can run, and what
  ``torchrun --nproc_per_node 2`` training gets, less one gradient all-reduce a step), the sum of their
  samples/s; eager, and (not with ``--quick``) each with a ``torch.compile``d UNet.

On CUDA the variants are the v1 step, ``Trainer`` fp32, bf16 autocast and bf16 + ``torch.compile``, at
``--batch``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffviz.classroom import data, model
from diffviz.classroom.train import CAPTION_DROPOUT, Trainer, parse_args


def synthetic_data(n: int, image_size: int) -> tuple[torch.Tensor, ...]:
    """``(latents [n, 4, s/4, s/4], ids [n, 77] int32, objects [n] int8, empty_ids [77] int32)``."""
    tok = model.tokenizer()
    scenes = data.scenes(0, min(n, 2048), image_size=image_size)
    ids = tok([scenes[i % len(scenes)].caption for i in range(n)], padding="max_length",
              max_length=model.MAX_TOKENS, return_tensors="pt").input_ids.to(torch.int32)
    objects = torch.tensor([len(scenes[i % len(scenes)].objects) for i in range(n)], dtype=torch.int8)
    empty = tok([""], padding="max_length", max_length=model.MAX_TOKENS, return_tensors="pt").input_ids[0]
    side = image_size // 4
    latents = torch.randn(n, 4, side, side, generator=torch.Generator().manual_seed(0))
    return latents, ids, objects, empty.to(torch.int32)


def make_trainer(image_size: int, batch: int, extra: tuple[str, ...] = (), device: str = "cpu",
                 n: int = 8192) -> Trainer:
    args = parse_args(["--device", device, "--image-size", str(image_size), "--batch", str(batch), *extra])
    comps = model.build_components(0, image_size, args.text_layers, args.channels, args.prediction)
    return Trainer(args, comps, torch.device(device), *synthetic_data(n, image_size))


def v1_step(tr: Trainer) -> float:
    """One step as v1 trained: batches drawn on the host with CPU randomness, and a sync per step (the loss
    read back); the model maths is the Trainer's (v1's preset: fp32, epsilon, min-SNR 5)."""
    a, n = tr.args, len(tr.latents)
    g = torch.Generator().manual_seed(a.seed * 1_000_003 + tr.step)
    epoch, offset = divmod(tr.step * a.batch, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed * 7919 + epoch))
    idx = perm[torch.arange(offset, offset + a.batch) % n].to(tr.device)
    x0 = tr.latents[idx]
    tokens = tr.ids[idx].clone()
    tokens[(torch.rand(a.batch, generator=g) < CAPTION_DROPOUT).to(tr.device)] = tr.empty_ids
    noise = torch.randn(x0.shape, generator=g).to(tr.device)
    t = torch.randint(0, len(tr.alphas_cumprod), (a.batch,), generator=g).to(tr.device)
    return tr.update(tr.loss(x0, tokens, noise, t)).item()


def matmul_gflops(threads: int, n: int = 1024, reps: int = 20) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return reps * 2 * n**3 / (time.perf_counter() - t0) / 1e9


def flops_per_sample(image_size: int) -> float:
    """FLOPs of one training sample (text encoder + UNet forward and backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    tr = make_trainer(image_size, 16, n=1024)
    x0, tokens, noise, t = tr.batch()
    with FlopCounterMode(display=False) as counter:
        tr.unet(x0 + noise, t, tr.text(tokens)[0]).sample.pow(2).mean().backward()
    return counter.get_total_flops() / 16


def _side_by_side_worker(image_size: int, batch: int, steps: int, extra: tuple[str, ...], start, out) -> None:
    torch.set_num_threads(1)
    tr = make_trainer(image_size, batch, extra, n=1024)
    tr.train_step()  # warm-up; compiles where asked
    start.wait()
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    out.put(steps * batch / (time.perf_counter() - t0))


def side_by_side(image_size: int, batch: int, steps: int, extra: tuple[str, ...] = (),
                 processes: int = 2) -> float:
    """Summed samples/s of ``processes`` one-thread trainers (``extra`` Trainer options) started together."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_side_by_side_worker, args=(image_size, batch, steps, extra, start, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1024, help="the batch of the CUDA variants")
    ap.add_argument("--image-size", type=int, default=model.TRAIN_SIZE)
    ap.add_argument("--steps", type=int, default=3, help="steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a few variants only (the test's setting)")
    args = ap.parse_args(argv)
    size = args.image_size

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    # name: (threads, batch, extra Trainer options); "v1 step" is the baseline
    variants = {"v1 step": (1, args.batch if cuda else 64, ())}
    for threads in () if cuda else (1, 2):
        for batch in ((64,) if args.quick else (64, 128, 256)):
            variants[f"Trainer t{threads} b{batch}"] = (threads, batch, ())
    if cuda:
        b = args.batch
        variants |= {f"Trainer fp32 b{b}": (1, b, ("--precision", "fp32")), f"Trainer bf16 b{b}": (1, b, ()),
                     f"Trainer bf16+compile b{b}": (1, b, ("--compile",))}
    elif not args.quick:
        variants |= {
            "Trainer t2 b256 channels-last": (2, 256, ("--channels-last",)),
            "Trainer t2 b256 bf16": (2, 256, ("--precision", "bf16")),
            "Trainer t2 b256 compile": (2, 256, ("--compile",)),
            "Trainer t2 b256 compile+channels-last": (2, 256, ("--compile", "--channels-last")),
        }
    runs = {}
    for name, (threads, batch, extra) in variants.items():
        torch.set_num_threads(threads)
        tr = make_trainer(size, batch, extra, args.device, n=1024 if args.quick else 8192)
        step = (lambda tr=tr: v1_step(tr)) if name == "v1 step" else tr.train_step
        t0 = time.perf_counter()
        step()  # warm-up; compiles where asked
        print(f"{name}: warm-up in {time.perf_counter() - t0:.1f} s", flush=True)
        runs[name] = (threads, batch, step)

    rates: dict[str, list[float]] = {name: [] for name in variants}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            threads, batch, step = runs[name]
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            if cuda:
                torch.cuda.synchronize()
            rates[name].append(args.steps * batch / (time.perf_counter() - t0))
    if not cuda:
        pair_batch = 64 if args.quick else 256
        for label, extra in [("", ())] + ([] if args.quick else [(" compile", ("--compile",))]):
            pair = side_by_side(size, pair_batch, args.steps * args.rounds, extra)
            rates[f"2 processes x 1 thread b{pair_batch}{label}"] = [pair]

    peak = {t: matmul_gflops(t) for t in (1, 2)}
    flops = flops_per_sample(size)
    base = statistics.median(rates["v1 step"])
    where = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"\nclassroom training, {size}x{size} images, {where}")
    print(f"fp32 matmul (1024^2): {peak[1]:.0f} GFLOP/s on 1 thread, {peak[2]:.0f} on 2; "
          f"model: {flops / 1e9:.3f} GFLOP per training sample (forward + backward)")
    print(f"{'variant':<40} {'samples/s min / median / max':>30} {'vs v1':>7} {'of 2-thread peak':>17}")
    medians = {}
    for name, r in rates.items():
        med = medians[name] = statistics.median(r)
        share = med * flops / 1e9 / peak[2]
        print(f"{name:<40} {min(r):>10.0f} / {med:>7.0f} / {max(r):>7.0f} {med / base:>6.2f}x {share:>16.0%}")
    return {"samples_per_second": medians, "gflops_per_sample": flops / 1e9, "matmul_gflops": peak}


if __name__ == "__main__":
    main()
