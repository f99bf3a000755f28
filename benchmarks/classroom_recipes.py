"""The classroom model's recipe search: arms trained from scratch for the same wall budget, scored alike.

    python benchmarks/classroom_recipes.py --out runs/recipes [--minutes 18] [--parallel 2] [--arms A B ...]

Each arm is ``python -m diffviz.classroom.train`` with its own options on top of the shared ones (v1's VAE
reused as it is, the same precomputed latents, one torch thread per arm, ``--parallel`` arms side by side, so
every arm gets the same share of the machine), for ``--minutes`` of UNet training. Then each arm's EMA model
is scored with ``classroom_quality`` on the held-out prompts (2 seeds: 24 single-object and 120 two-object
images, word-map IoU on 10 two-object prompts) with 95% intervals (Wilson for rates, normal for the IoU).
Finished arms are skipped on a re-run; the table goes to ``<out>/table.md`` and ``<out>/table.json``.
Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import classroom_quality as quality

ROOT = Path(__file__).resolve().parents[1]
SHARED = ["--image-size", "32", "--init-vae", str(ROOT / "diffviz/classroom/weights/vae"), "--vae-steps", "0",
          "--n-scenes", "150000", "--threads", "1", "--ship-every", "1000", "--save-every", "5"]
# arm name: (what it changes, options); each arm differs from the one it names in one lever group
ARMS = {
    "v1": ("v1's recipe: epsilon, lr 5e-4 constant after 500 warm-up steps, batch 64, EMA 0.999",
           ["--preset", "v1"]),
    "sched": ("v1 + lr 1e-3, 300 warm-up steps, cosine decay to 0 at the budget's end, EMA 0.995",
              ["--preset", "v1", "--lr", "1e-3", "--warmup", "300", "--decay", "--ema", "0.995"]),
    "sched+text1": ("sched + one causal self-attention layer in the text encoder",
                    ["--preset", "v1", "--lr", "1e-3", "--warmup", "300", "--decay", "--ema", "0.995",
                     "--text-layers", "1"]),
    "sched+two80+lognorm": ("sched + 80% two-object scenes + logit-normal timesteps",
                            ["--preset", "v1", "--lr", "1e-3", "--warmup", "300", "--decay", "--ema", "0.995",
                             "--two-share", "0.8", "--timesteps", "logit-normal"]),
    "sched+v": ("sched + v-prediction", ["--preset", "v1", "--lr", "1e-3", "--warmup", "300", "--decay",
                                         "--ema", "0.995", "--prediction", "v_prediction"]),
}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a rate ``k / n``."""
    if n == 0:
        return (math.nan, math.nan)
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


def intervals(report: dict) -> dict:
    """A ``classroom_quality`` report's deciding scores, each as ``(value, low, high)`` with its 95% interval
    (Wilson for the rates, normal for the mean IoU): ``single``, ``two``, ``relation``, ``iou``; and
    ``iou_words``, the number of word maps behind the IoU."""
    rows = {}
    for key, report_key, field in (("single", "single", "correct"), ("two", "two", "correct"),
                                   ("relation", "two", "relation_ok")):
        n = report[report_key]["n"]
        k = round(report[report_key][field] * n)
        rows[key] = (k / n, *wilson(k, n))
    loc = report["localisation"]
    ious = loc.get("ious_correct_images", [])
    mean = loc["miou_correct_images"]
    sd = (sum((x - mean) ** 2 for x in ious) / max(len(ious) - 1, 1)) ** 0.5
    half = 1.96 * sd / max(len(ious), 1) ** 0.5
    rows["iou"] = (mean, mean - half, mean + half) if ious else (math.nan, math.nan, math.nan)
    rows["iou_words"] = len(ious)
    return rows


def prepare_latents(out: Path) -> Path:
    """The shared latents (``classroom_quality``'s held-out prompts excluded), computed once."""
    cache = out / "_latents"
    if not (cache / "latents.safetensors").exists():
        subprocess.run([sys.executable, "-m", "diffviz.classroom.train", *SHARED, "--threads", "2",
                        "--steps", "0", "--ckpt", str(cache), "--weights", str(cache / "weights")],
                       check=True, cwd=ROOT)
    return cache


def start_arm(name: str, out: Path, cache: Path, minutes: float) -> subprocess.Popen | None:
    ckpt = out / name
    if (ckpt / "weights" / "training_log.json").exists():
        return None
    ckpt.mkdir(parents=True, exist_ok=True)
    for part in ("latents.safetensors", "vae"):
        if not (ckpt / part).exists():
            (ckpt / part).symlink_to((cache / part).resolve())
    cmd = [sys.executable, "-m", "diffviz.classroom.train", *SHARED, *ARMS[name][1],
           "--max-minutes", str(minutes), "--ckpt", str(ckpt), "--weights", str(ckpt / "weights")]
    with open(ckpt / "log.txt", "a") as log:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))


def score(name: str, out: Path) -> dict:
    path = out / name / "score.json"
    if not path.exists():
        report = quality.main(["--weights", str(out / name / "weights"), "--seeds", "2",
                               "--loc-prompts", "10", "--threads", "2"])
        path.write_text(json.dumps(report))
    report = json.loads(path.read_text())
    log = json.loads((out / name / "weights" / "training_log.json").read_text())
    return {"arm": name, "change": ARMS[name][0], "samples_per_second": log["samples_per_second"],
            "samples_seen": log["samples_seen"], **intervals(report)}


def table(rows: list[dict]) -> str:
    fmt = lambda v: "n/a" if math.isnan(v[0]) else f"{v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"
    lines = [("| arm | change | samples/s | samples seen | single | two-object | relation "
              "| IoU (correct images) |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['change']} | {r['samples_per_second']:.0f} | {r['samples_seen']:,} "
                     "| "
                     f"{fmt(r['single'])} | {fmt(r['two'])} | {fmt(r['relation'])} | {fmt(r['iou'])} "
                     f"(n={r['iou_words']}) |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "recipes")
    ap.add_argument("--minutes", type=float, default=18.0, help="UNet training minutes per arm")
    ap.add_argument("--parallel", type=int, default=2, help="arms trained side by side (one thread each)")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = prepare_latents(args.out)
    pending = list(args.arms)
    while pending:
        group, pending = pending[: args.parallel], pending[args.parallel :]
        t0 = time.time()
        procs = [p for p in (start_arm(name, args.out, cache, args.minutes) for name in group) if p]
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"an arm failed: {p.args}")
        print(f"trained {group} in {(time.time() - t0) / 60:.1f} min", flush=True)
    rows = [score(name, args.out) for name in args.arms]
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "table.json").write_text(json.dumps(rows, indent=1))
    print(text)
    shutil.rmtree(args.out / "_latents" / "weights", ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
