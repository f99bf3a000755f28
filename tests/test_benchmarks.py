"""The GPU benchmark's code path runs on the CPU at tiny size, and keeps images identical."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_capture_benchmark_runs_tiny_on_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_capture.py"),
                          "--tiny", "--reps", "1"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [l for l in out.splitlines() if "ratio" in l]
    # SD 1.5, SDXL, SD3, CogVideoX shapes x 4 modes; Flux and Wan x 3 (no unconditional half)
    assert len(rows) == 22
    assert all(re.search(r"min +[\d.]+ median +[\d.]+ max +[\d.]+ s", r) for r in rows), out
    assert all(re.search(r"max \|diff\| 0$", r) for r in rows), out
    sizes = [float(m) for m in re.findall(r"trace +([\d.]+) MiB", out)]
    assert len(sizes) == 16 and all(s > 0 for s in sizes)
    for kind in ("sd3", "flux", "wan", "cogvideox"):  # built on the meta device, as on a GPU
        assert f"{kind} shape (tiny)" in out


def test_training_speed_benchmark_prints_its_table():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "classroom_train_speed.py"), "--quick",
                          "--steps", "1", "--rounds", "1"], capture_output=True, text=True, timeout=600,
                         check=True).stdout
    rows = {m[0]: float(m[1])
            for m in re.findall(r"^(\S.*?) +\d+ / +\d+ / +\d+ +([\d.]+)x +\d+%$", out, re.MULTILINE)}
    assert set(rows) == {"v1 step", "Trainer t1 b64", "Trainer t2 b64", "2 processes x 1 thread b64"}, out
    assert rows["v1 step"] == 1.0 and all(r > 0 for r in rows.values())
    assert re.search(r"fp32 matmul \(1024\^2\): \d+ GFLOP/s on 1 thread, \d+ on 2; "
                     r"model: 0\.\d+ GFLOP", out), out


def test_recipe_table_intervals():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from classroom_recipes import wilson

    low, high = wilson(29, 120)
    assert low < 29 / 120 < high and 0.16 < low < 0.18 and 0.32 < high < 0.34  # the textbook Wilson interval
    assert abs(wilson(0, 24)[0]) < 1e-12 and abs(wilson(24, 24)[1] - 1) < 1e-12


def test_relation_probe_measures_what_the_shipped_model_uses():
    """The probe's colour swap hurts the shipped model's x0 (it draws the colours it is told); every row has
    its share of scenes in [0, 1] and a relative gap."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from classroom_relation_probe import main

    from diffviz.classroom.probe import TIMESTEPS

    rows = main(["--layouts", "1", "--threads", "2"])["shipped"]
    assert [r["t"] for r in rows] == list(TIMESTEPS)
    assert all(0 <= r["order_wins"] <= 1 and 0 <= r["binding_wins"] <= 1 for r in rows)
    middle = [r for r in rows if 0.1 < r["snr"] < 1]  # the noise shows blobs, not yet their colours
    assert len(middle) == 3 and all(r["binding_gap"] > 0.05 and r["binding_wins"] > 0.55 for r in middle)
