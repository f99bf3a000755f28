"""A student's own classroom model: how long ``train_student_model`` takes here and how well its model draws.

    python benchmarks/classroom_student.py [--out runs/student] [--minutes 8.5] [--seeds 6]

Runs lesson 10's one call (the "student" preset: the shipped VAE, 16,000 new scenes, ``--minutes`` of UNet
training) from scratch on this machine, with nothing else running, and prints its wall time; then judges the
model's single-object images on the held-out prompts (12 prompts x ``--seeds`` seeds, 25 DDIM steps, guidance
7.5) and its two-object images (60 prompts x 1 seed), with 95% Wilson intervals. Bar: at most 10 minutes on
2 cores, single objects right at least 70% of the time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classroom_quality import faithfulness, generate
from classroom_recipes import wilson

from diffviz.classroom import data, train


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/student"))
    ap.add_argument("--minutes", type=float, default=8.5)
    ap.add_argument("--seeds", type=int, default=6)
    args = ap.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)  # from scratch
    t0 = time.time()
    pipe = train.train_student_model(args.out, minutes=args.minutes)
    wall = time.time() - t0
    torch.set_num_threads(2)
    singles, twos = data.held_out_prompts()
    single, _ = faithfulness(generate(pipe, singles, list(range(args.seeds)), 25, 7.5))
    two, _ = faithfulness(generate(pipe, twos, [0], 25, 7.5))
    rows = {}
    for name, result in (("single", single), ("two-object", two)):
        k = round(result["correct"] * result["n"])
        low, high = wilson(k, result["n"])
        rows[name] = (k / result["n"], low, high, result["n"])
    print(f"\nstudent run: {wall / 60:.1f} min wall in all ({args.minutes} min of UNet training), "
          f"{torch.get_num_threads()} threads  [bar: 10 min]")
    for name, (rate, low, high, n) in rows.items():
        print(f"{name:<11} right {rate:.0%} [{low:.0%}, {high:.0%}] of {n} images")
    return {"wall_minutes": wall / 60, **rows}


if __name__ == "__main__":
    main()
