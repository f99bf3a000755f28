"""The GPU benchmark's code path runs on the CPU at tiny size, and keeps images identical."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_capture_benchmark_runs_tiny_on_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_capture.py"), "--tiny", "--reps", "1"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [l for l in out.splitlines() if "ratio" in l]
    assert len(rows) == 15  # SD 1.5, SDXL, SD3 shapes x 4 modes; Flux x 3 (no unconditional half)
    assert all(re.search(r"min +[\d.]+ median +[\d.]+ max +[\d.]+ s", r) for r in rows), out
    assert all(re.search(r"max \|diff\| 0$", r) for r in rows), out
    sizes = [float(m) for m in re.findall(r"trace +([\d.]+) MiB", out)]
    assert len(sizes) == 11 and all(s > 0 for s in sizes)
    assert "sd3 shape (tiny)" in out and "flux shape (tiny)" in out  # built on the meta device, as on a GPU
