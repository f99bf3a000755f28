"""Speed of the classroom model on this machine's CPU.

    python benchmarks/classroom_speed.py [--weights DIR] [--threads 2]

Prints the time of ``diffviz.classroom.load_pipeline()`` (cold: a fresh Python process including the
imports; warm: a second load in the same process) [issue bar: < 3 s], and of one image at the model's
resolution with 25 steps and classifier-free guidance [bar: < 2 s on 2 cores], median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLD = """
import time, sys
t = time.perf_counter()
from diffviz.classroom import load_pipeline
pipe = load_pipeline({weights!r})
print(time.perf_counter() - t)
"""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(args.threads))
    cold = [float(subprocess.run([sys.executable, "-c", COLD.format(weights=args.weights)], env=env,
                                 check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            for _ in range(3)]

    import torch

    torch.set_num_threads(args.threads)
    from diffviz.classroom import load_pipeline

    load_pipeline(args.weights)
    t = time.perf_counter()
    pipe = load_pipeline(args.weights)
    warm = time.perf_counter() - t

    prompt = "a red circle left of a green triangle"
    pipe(prompt, num_inference_steps=25, generator=torch.Generator().manual_seed(0))  # first call allocates
    times = []
    for i in range(args.repeats):
        t = time.perf_counter()
        image = pipe(prompt, num_inference_steps=25, guidance_scale=7.5,
                     generator=torch.Generator().manual_seed(i)).images[0]
        times.append(time.perf_counter() - t)
    print(f"torch threads: {args.threads}; CPU: {os.cpu_count()} cores visible; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"load_pipeline cold (new process, with imports): median {statistics.median(cold):.2f} s "
          f"(runs: {', '.join(f'{c:.2f}' for c in cold)})  [bar < 3 s]")
    print(f"load_pipeline warm: {warm:.2f} s")
    print(f"{image.size[0]}x{image.size[1]} image, 25 steps, guidance 7.5: "
          f"median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f})  [bar < 2 s]")


if __name__ == "__main__":
    main()
