"""Capture cost at real sizes: time, peak GPU memory and trace size, traced vs untraced, side by side.

    python benchmarks/gpu_capture.py            # CUDA, float16: SD 1.5 shape (512 px, 50 DDIM steps, CFG 7.5)
                                                #   and SDXL shape (1024 px, 30 Euler steps)
    python benchmarks/gpu_capture.py --tiny     # CPU, float32, tiny pipelines: the same code path, for CI

Pipelines are built from config with random weights (diffviz.testing; nothing is downloaded).
Modes run interleaved, ``--reps`` times each; the script prints the median time, its ratio to
untraced, the peak-memory delta, the trace size and the largest pixel difference from the
untraced image (which must be 0).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import diffviz
from diffviz.testing import full_size_pipeline, tiny_pipeline

PROMPT = "a large red circle left of a small blue square"  # 10 words, 10 tokens


def measure(pipe, modes: dict, steps: int, size: int, reps: int, device: torch.device) -> None:
    cuda = device.type == "cuda"

    def run():
        return pipe(PROMPT, num_inference_steps=steps, height=size, width=size, output_type="np",
                    generator=torch.Generator(device).manual_seed(0)).images[0]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    run()  # warm-up: kernels, allocator
    times = {m: [] for m in modes}
    peaks, sizes, images = {}, {}, {}
    for _ in range(reps):
        for mode, options in modes.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            if options is None:
                image = run()
            else:
                with diffviz.trace(pipe, **options) as tr:
                    image = run()
                sizes[mode] = tr.nbytes
            sync()
            times[mode].append(time.perf_counter() - t0)
            peaks[mode] = torch.cuda.max_memory_allocated() if cuda else 0
            images[mode] = image
    base, base_peak = statistics.median(times["untraced"]), peaks["untraced"]
    for mode in modes:
        med = statistics.median(times[mode])
        diff = float(np.abs(images[mode].astype(np.float32) - images["untraced"].astype(np.float32)).max())
        mem = f"peak {peaks[mode] / 2**20:7.0f} MiB ({(peaks[mode] - base_peak) / max(base_peak, 1):+6.1%})" if cuda \
            else "peak n/a on CPU"
        size_mib = f"{sizes[mode] / 2**20:7.1f} MiB" if mode in sizes else "      -"
        print(f"  {mode:34s} {med:7.3f} s  ratio {med / base:5.3f}  {mem}  trace {size_mib}  max |diff| {diff:g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny pipelines on the CPU (what CI runs)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    runs = [("sd", "ddim", 4, 64, "up_blocks.1"), ("sdxl", "euler", 4, 64, "up_blocks.0")] if args.tiny else \
        [("sd15", "ddim", 50, 512, "up_blocks.1"), ("sdxl", "euler", 30, 1024, "up_blocks.0")]
    for kind, sched, steps, size, subset in runs:
        pipe = tiny_pipeline(kind, sched) if args.tiny else full_size_pipeline(kind, sched).to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
        print(f"{kind} shape, {size}x{size}, {steps} {sched} steps, CFG, {str(dtype).removeprefix('torch.')}, "
              f"{name}, median of {args.reps}")
        modes = {
            "untraced": None,
            "default (head mean, all layers)": {},
            f"all heads, layers={subset}": {"heads": True, "layers": subset},
            "head mean + uncond half": {"uncond": True},
        }
        measure(pipe, modes, steps, size, args.reps, device)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
