"""Start-up times of diffviz's entry points, each in a fresh Python process, beside the floors they stand on.

    python benchmarks/startup.py [--repeats 5]

Prints the median wall time (process start to exit) of:
  `diffviz --help` [issue 11 bar: < 0.5 s], `diffviz --version`, `import diffviz`,
  `import diffviz` + `load_trace` + one heat map (no diffusers), `diffviz.classroom.load_pipeline()` cold
  [bar: < 3 s on a laptop],
and, as floors that diffviz cannot go below: an empty interpreter, `import torch`, and
`import torch` + `from diffusers import StableDiffusionPipeline` (what loading any pipeline needs).
Each diffviz row shows its ratio to the floor it rests on. Run it on a quiet machine: the numbers
are wall times and move with the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(argv: list[str], env: dict, repeats: int) -> float:
    """Median seconds of ``argv`` run ``repeats`` times, after one untimed run (file cache warm)."""
    subprocess.run(argv, env=env, capture_output=True, check=True)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    py = [sys.executable, "-c"]
    with tempfile.TemporaryDirectory() as tmp:
        trace_file = Path(tmp, "run.dvz")
        subprocess.run(py + [(
            "import torch, diffviz\npipe = diffviz.classroom.load_pipeline()\n"
            "with diffviz.trace(pipe) as tr:\n"
            "    pipe('a red circle', num_inference_steps=10, generator=torch.Generator().manual_seed(0))\n"
            f"tr.save({str(trace_file)!r})")], env=env, check=True, capture_output=True)
        floors = {
            "python": wall(py + ["pass"], env, args.repeats),
            "torch": wall(py + ["import torch"], env, args.repeats),
            "diffusers": wall(py + ["import torch\nfrom diffusers import StableDiffusionPipeline"], env,
                              args.repeats),
        }
        rows = [
            ("diffviz --help", py + ["from diffviz.cli import main\nmain(['--help'])"], "python"),
            ("diffviz --version", py + ["from diffviz.cli import main\nmain(['--version'])"], "python"),
            ("import diffviz", py + ["import diffviz"], "python"),
            ("import diffviz + load_trace + heat map",
             py + [f"import diffviz\ndiffviz.load_trace({str(trace_file)!r}).word_heatmap('red')"], "torch"),
            ("classroom.load_pipeline() cold",
             py + ["import diffviz\ndiffviz.classroom.load_pipeline()"], "diffusers"),
        ]
        print(f"median of {args.repeats} fresh processes each, OMP_NUM_THREADS=1, {os.cpu_count()} CPUs")
        for name, floor in floors.items():
            label = {"python": "python -c pass", "torch": "import torch",
                     "diffusers": "import torch + diffusers StableDiffusionPipeline"}[name]
            print(f"  floor  {label:48s} {floor:6.2f} s")
        for label, cmd, floor in rows:
            t = wall(cmd, env, args.repeats)
            print(f"  {label:55s} {t:6.2f} s   ratio to floor '{floor}' {t / floors[floor]:5.2f}")


if __name__ == "__main__":
    main()
