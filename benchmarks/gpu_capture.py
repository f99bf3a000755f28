"""Capture cost at real sizes: time, peak GPU memory and trace size, traced vs untraced, side by side.

    python benchmarks/gpu_capture.py            # CUDA: SD 1.5 shape (512 px, 50 DDIM steps, CFG, float16),
                                                #   SDXL shape (1024 px, 30 Euler steps, CFG, float16),
                                                #   SD3-medium shape (1024 px, 28 flow steps, CFG, bfloat16),
                                                #   Flux-dev shape (1024 px, 28 flow steps, no CFG, bfloat16)
                                                #   Wan 2.1 1.3B shape (81 frames of 480x832, 50 UniPC steps,
                                                #     CFG as two calls, bfloat16)
                                                #   CogVideoX-2b shape (49 frames of 480x720, 50 DDIM steps,
                                                #     CFG, bfloat16)
    python benchmarks/gpu_capture.py --only sd3,flux --reps 3
    python benchmarks/gpu_capture.py --tiny     # CPU, float32, tiny pipelines: the same code paths, for CI

Pipelines are built from config with random weights (diffviz.testing; nothing is downloaded); SD3,
Flux, Wan and CogVideoX on the meta device and initialised on the GPU (``full_size_dit``,
``full_size_video``). Each round runs every mode once,
in an order shuffled per round (seeded), so no mode always runs first; ``--reps`` rounds. The script
prints min / median / max time, the median's ratio to untraced, the peak-memory delta, the trace size and
the largest pixel difference from the untraced image (which must be 0).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import torch

import diffviz
from diffviz.testing import full_size_dit, full_size_pipeline, full_size_video, tiny_pipeline

PROMPT = "a large red circle left of a small blue square"  # 10 words, 10 tokens
# name: (steps, size, layers for the all-heads mode, how to build it at full size / at tiny size)
RUNS = {
    "sd15": (50, 512, "up_blocks.1", lambda dev: full_size_pipeline("sd15", "ddim").to(dev, torch.float16),
             lambda: tiny_pipeline("sd", "ddim")),
    "sdxl": (30, 1024, "up_blocks.0", lambda dev: full_size_pipeline("sdxl", "euler").to(dev, torch.float16),
             lambda: tiny_pipeline("sdxl", "euler")),
    "sd3": (28, 1024, "transformer_blocks.1", lambda dev: full_size_dit("sd3", dev, torch.bfloat16),
            lambda: full_size_dit("sd3-tiny", "cpu", torch.float32)),
    "flux": (28, 1024, "single", lambda dev: full_size_dit("flux", dev, torch.bfloat16),
             lambda: full_size_dit("flux-tiny", "cpu", torch.float32)),
    "wan": (50, (480, 832, 81), "blocks.1", lambda dev: full_size_video("wan", dev, torch.bfloat16),
            lambda: full_size_video("wan-tiny", "cpu", torch.float32)),
    "cogvideox": (50, (480, 720, 49), "transformer_blocks.1",
                  lambda dev: full_size_video("cogvideox", dev, torch.bfloat16),
                  lambda: full_size_video("cogvideox-tiny", "cpu", torch.float32)),
}
VIDEO = {"wan", "cogvideox"}


def measure(pipe, modes: dict, call: dict, reps: int, device: torch.device, seed: int = 0) -> None:
    """Time ``pipe(PROMPT, **call)`` untraced and under each of ``modes`` (trace options)."""
    cuda = device.type == "cuda"

    def run():
        out = pipe(PROMPT, output_type="np", generator=torch.Generator(device).manual_seed(0), **call)
        return out.frames[0] if hasattr(out, "frames") else out.images[0]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    run()  # warm-up: kernels, allocator
    order = random.Random(seed)
    times = {m: [] for m in modes}
    peaks, sizes, images = dict.fromkeys(modes, 0), {}, {}
    for _ in range(reps):
        for mode in order.sample(list(modes), len(modes)):
            options = modes[mode]
            if cuda:
                torch.cuda.empty_cache()
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
            peaks[mode] = max(peaks[mode], torch.cuda.max_memory_allocated() if cuda else 0)
            images[mode] = image
    base, base_peak = statistics.median(times["untraced"]), peaks["untraced"]
    for mode in modes:
        ts = times[mode]
        med = statistics.median(ts)
        diff = float(np.abs(images[mode].astype(np.float32) - images["untraced"].astype(np.float32)).max())
        growth = (peaks[mode] - base_peak) / max(base_peak, 1)
        mem = f"peak {peaks[mode] / 2**20:7.0f} MiB ({growth:+6.1%})" if cuda else "peak n/a on CPU"
        size_mib = f"{sizes[mode] / 2**20:7.1f} MiB" if mode in sizes else "      -"
        print(f"  {mode:40s} min {min(ts):7.3f} median {med:7.3f} max {max(ts):7.3f} s  "
              f"ratio {med / base:5.3f}  {mem}  trace {size_mib}  max |diff| {diff:g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny pipelines on the CPU (what CI runs)")
    ap.add_argument("--reps", type=int, default=5, help="rounds; each runs every mode once, shuffled")
    ap.add_argument("--only", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    args = ap.parse_args()
    wanted = args.only.split(",")
    if bad := [w for w in wanted if w not in RUNS]:
        ap.error(f"--only: unknown {bad}; choose from {list(RUNS)}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention
    cpu = f"CPU, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu
    for kind in wanted:
        steps, size, subset, full, tiny = RUNS[kind]
        if args.tiny:
            steps, size = 4, (64, 64, 9) if kind in VIDEO else 64
        h, w, frames = size if kind in VIDEO else (size, size, None)
        call = dict(num_inference_steps=steps, height=h, width=w)
        if kind in VIDEO:
            text = 16 if args.tiny else 512 if kind == "wan" else 226  # T5 positions
            call |= dict(num_frames=frames, max_sequence_length=text)
        t0 = time.perf_counter()
        pipe = tiny() if args.tiny else full(device)
        pipe.set_progress_bar_config(disable=True)
        dtype = str(pipe.dtype).removeprefix("torch.")
        guided = kind != "flux"  # Flux-dev: guidance is an input of the model, one batch row
        shape = f"{frames} frames of {h}x{w}" if frames else f"{h}x{w}"
        print(f"{kind} shape{' (tiny)' if args.tiny else ''}, {shape}, {steps} "
              f"{type(pipe.scheduler).__name__} steps, {'CFG' if guided else 'no CFG'}, {dtype}, {name}, "
              f"{args.reps} rounds in shuffled order, built in {time.perf_counter() - t0:.1f} s")
        modes = {
            "untraced": None,
            "default (head mean, all layers)": {},
            f"all heads, layers={subset}": {"heads": True, "layers": subset},
        }
        if guided and kind != "wan":  # Wan runs the unconditional branch as a call of its own: no maps
            modes["head mean + uncond half"] = {"uncond": True}
        if kind in VIDEO:  # a video's trace passes the default 2 GiB (Wan 81 frames: 2.2 GiB estimated)
            modes = {m: None if o is None else o | {"max_bytes": 8 * 2**30} for m, o in modes.items()}
        measure(pipe, modes, call, args.reps, device)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
