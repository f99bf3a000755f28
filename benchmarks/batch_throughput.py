"""Throughput of ``diffviz batch`` against a plain untraced loop over the same prompts, same machine.

    python benchmarks/batch_throughput.py [--prompts 24] [--rounds 3] [--steps 25] [--keep summary]
    torchrun --standalone --nproc_per_node 2 benchmarks/batch_throughput.py ...      # two processes
    torchrun --standalone --nproc_per_node NGPU benchmarks/batch_throughput.py --kind sd15   # a process a GPU

Each round runs the untraced loop (``pipe(prompt, ...)`` per item, this process's share of the items)
and ``diffviz.batch.run`` (trace, summary or full trace, atomic file and index writes, the final merge)
over a fresh slice of the held-out classroom prompts, alternating which goes first, so drift in the
load of a shared machine hits both alike. Under several processes every phase starts and ends on a
barrier, and rank 0 times the whole group; CPU time is summed over the processes (on a shared machine
it is the steadier of the two). A warm-up runs one item each way first (imports, first allocation).
``--kind sd15`` uses a random-weight pipeline with Stable Diffusion 1.5's shapes
(``diffviz.testing.full_size_pipeline``, 512 px, float16) on GPU LOCAL_RANK. Prints the items per
second of each and their ratio (batch time / loop time; the issue's bar is 1.10) per round and over
all rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffviz import batch
from diffviz.classroom import held_out_prompts, load_pipeline


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=24, help="items per round and mode")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--keep", default="summary", choices=["summary", "full"])
    ap.add_argument("--kind", default="classroom", choices=["classroom", "sd15"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rank, world, local = batch.launch_env()
    dist = None
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    sync = dist.barrier if dist else (lambda: None)
    singles, twos = held_out_prompts()
    captions = singles + twos
    if args.kind == "sd15":
        from diffviz.testing import full_size_pipeline

        pipe = full_size_pipeline("sd15").to(f"cuda:{local}", torch.float16)
    else:
        pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)

    def loop(items):
        for it in items[rank::world]:
            pipe(it.prompt, num_inference_steps=it.steps, guidance_scale=it.guidance,
                 generator=torch.Generator(pipe.device).manual_seed(it.seed))

    def traced(items, folder):
        batch.run(items, folder, pipe, keep=args.keep, progress=False)

    totals = {"loop": 0.0, "batch": 0.0}
    cpu = {"loop": 0.0, "batch": 0.0}
    ratios = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        tmp = tmp if world == 1 else _shared_tmp(tmp, dist)
        warm = [batch.Item(f"{i:06d}", captions[i], 99, args.steps, 7.5) for i in range(world)]
        loop(warm)
        traced(warm, Path(tmp) / "warm-up")
        for r in range(args.rounds):
            start = r * args.prompts
            items = [batch.Item(f"{i:06d}", captions[i % len(captions)], i // len(captions), args.steps, 7.5)
                     for i in range(start, start + args.prompts)]
            order = ["loop", "batch"] if r % 2 == 0 else ["batch", "loop"]
            took = {}
            for mode in order:
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                if mode == "loop":
                    loop(items)
                else:
                    traced(items, Path(tmp) / f"round{r}")
                used = torch.tensor([time.process_time() - c0], dtype=torch.float64)
                if dist:
                    dist.all_reduce(used)  # also a barrier
                took[mode] = time.perf_counter() - t0
                totals[mode] += took[mode]
                cpu[mode] += float(used)
            ratios.append(took["batch"] / took["loop"])
            if rank == 0:
                print(f"round {r}: loop {args.prompts / took['loop']:.2f} items/s, batch "
                      f"{args.prompts / took['batch']:.2f} items/s, ratio {ratios[-1]:.3f}")
        if rank == 0:
            n = args.prompts * args.rounds
            disk = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
            each = "1 GPU" if args.kind == "sd15" else "1 CPU thread"
            print(f"{args.kind} model, {args.steps} DDIM steps, guidance 7.5, {world} process(es) "
                  f"({each} each), keep={args.keep}, {n} items per mode")
            print(f"  untraced loop   {n / totals['loop']:6.2f} items/s   "
                  f"CPU {cpu['loop'] / n * 1000:6.0f} ms/item")
            print(f"  diffviz batch   {n / totals['batch']:6.2f} items/s   "
                  f"CPU {cpu['batch'] / n * 1000:6.0f} ms/item   "
                  f"({disk / (n + world) / 1e3:.1f} kB per item on disk, index included)")
            print(f"  ratio batch/loop: wall {totals['batch'] / totals['loop']:.3f} (median of rounds "
                  f"{statistics.median(ratios):.3f}), CPU time {cpu['batch'] / cpu['loop']:.3f}")
        sync()
    if dist:
        dist.destroy_process_group()


def _shared_tmp(tmp: str, dist) -> str:
    """Rank 0's temporary folder, for every rank (one machine)."""
    box = [tmp]
    dist.broadcast_object_list(box, src=0)
    return box[0]


if __name__ == "__main__":
    main()
