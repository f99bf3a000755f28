"""Capture overhead on CPU: traced vs untraced generation time, measured side by side.

    python benchmarks/capture_overhead.py [--kind sd|sdxl] [--steps 20] [--reps 5]

Runs untraced and traced generations interleaved (so drift in machine load hits both alike) on a
tiny random-weight pipeline built from config, and prints the median wall time and process CPU
time of each and their ratios, for the default capture, for all heads with the unconditional
half, and for the default capture plus the self-attention of two queries (a pixel and a quarter of
the image, ``queries=``). On a shared machine the CPU-time ratio is the steadier of the two.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import diffviz
from diffviz.testing import tiny_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="sd", choices=["sd", "sdxl"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: steadiest on a shared CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = tiny_pipeline(args.kind, "ddim")
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe("a red circle left of a blue square", num_inference_steps=args.steps, height=64, width=64,
                    generator=torch.Generator().manual_seed(0)).images[0]

    modes = {"untraced": None, "default capture": {}, "all heads + uncond": {"heads": True, "uncond": True},
             "+ 2 self-attn queries": {"queries": [(16, 16), (0, 0, 32, 32)]}}
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    images: dict[str, np.ndarray] = {}
    run()  # warm-up
    for _ in range(args.reps):
        for mode, options in modes.items():
            t0, c0 = time.perf_counter(), time.process_time()
            if options is None:
                image = run()
            else:
                with diffviz.trace(pipe, **options):
                    image = run()
            times[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)
            images[mode] = np.asarray(image)
    base, cpu_base = statistics.median(times["untraced"]), statistics.median(cpu["untraced"])
    print(f"tiny {args.kind} pipeline, 64x64, {args.steps} DDIM steps, CFG, "
          f"{torch.get_num_threads()} CPU threads, "
          f"median of {args.reps}")
    for mode in modes:
        med, cpu_med = statistics.median(times[mode]), statistics.median(cpu[mode])
        same = np.array_equal(images[mode], images["untraced"])
        print(f"  {mode:22s} wall {med * 1000:8.1f} ms  ratio {med / base:5.3f}   "
              f"CPU time {cpu_med * 1000:8.1f} ms  ratio {cpu_med / cpu_base:5.3f}   image identical: {same}")


if __name__ == "__main__":
    main()
