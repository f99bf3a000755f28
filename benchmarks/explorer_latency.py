"""Explorer update latency per interaction, and the HTML report's size.

    python benchmarks/explorer_latency.py [--steps 25] [--reps 3] [--trace run.dvz]

Traces a tiny random-weight SD pipeline (64x64, 25 DDIM steps, every head kept) unless --trace
gives a saved trace, builds ``diffviz.explore(trace)`` and times each kind of interaction as the
kernel sees it: setting a control's value runs its observer, which recomputes from the trace and
updates the FigureWidget, synchronously. What the browser then needs to redraw is not included
(tests/test_browser.py prints that end to end). Then writes the report and prints its size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import diffviz
from diffviz.testing import tiny_pipeline
from diffviz.viz import explore, report

BUDGET_MS = 100


def make_trace(steps: int):
    pipe = tiny_pipeline("sd", "ddim")
    pipe.set_progress_bar_config(disable=True)
    with diffviz.trace(pipe, heads=True) as tr:
        pipe("a red circle left of a blue square", num_inference_steps=steps, height=64, width=64,
             generator=torch.Generator().manual_seed(0))
    return tr


def timed(widget, values) -> list[float]:
    out = []
    for v in values:
        t0 = time.perf_counter()
        widget.value = v
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--reps", type=int, default=3, help="passes over each interaction")
    ap.add_argument("--trace", type=Path, help="a saved trace to explore instead of a fresh tiny one")
    args = ap.parse_args()
    tr = diffviz.load_trace(args.trace) if args.trace else make_trace(args.steps)

    build_ms = []
    for _ in range(2):  # the first build also loads the widget's JavaScript bundle
        t0 = time.perf_counter()
        app = explore(tr)
        build_ms.append((time.perf_counter() - t0) * 1000)
    n = tr.num_steps
    words = [(i,) for i in range(len(tr.words))] + [(1, 6), (2, 7), (0, 1, 2)]
    words = [w for w in words if max(w) < len(tr.words)]
    layers = [v for _, v in app.layers.options]
    results: dict[str, list[float]] = {}
    results["step, first visit"] = timed(app.step, list(range(1, n)) + [0])  # encodes each step's PNGs once
    results["step (play)"] = timed(app.step, list(range(n)) * args.reps)
    results["step (jumps)"] = timed(app.step, [(k * 7) % n for k in range(n)] * args.reps)
    results["words"] = timed(app.words, words * args.reps)
    results["layers"] = timed(app.layers, layers * args.reps)
    app.layers.value = "all"
    heads = [v for _, v in app.heads.options]
    if len(heads) > 1:
        results["head"] = timed(app.heads, heads * args.reps)
    results["opacity"] = timed(app.opacity, [0.1 * k for k in range(11)] * args.reps)

    print(f"explorer on {tr!r}")
    print(f"  torch threads {torch.get_num_threads()} (updates run on one), build {build_ms[0]:.0f} ms first, {build_ms[1]:.0f} ms again")
    print(f"  {'interaction':20s} {'n':>4s} {'median':>8s} {'p95':>8s} {'max':>8s}   (ms, budget {BUDGET_MS})")
    for name, ms in results.items():
        ms_sorted = sorted(ms)
        p95 = ms_sorted[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        flag = "ok" if statistics.median(ms) < BUDGET_MS else "OVER BUDGET"
        print(f"  {name:20s} {len(ms):4d} {statistics.median(ms):8.1f} {p95:8.1f} {max(ms):8.1f}   {flag}")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = report(tr, Path(tmp) / "run.html")
        report_s = time.perf_counter() - t0
        size = path.stat().st_size
        figures = path.read_text(encoding="utf-8").count('class="plotly-graph-div"')
    from plotly.offline import get_plotlyjs

    js = len(get_plotlyjs().encode())
    print(f"report: {size / 1e6:.2f} MB in {report_s:.1f} s (plotly.js inlined {js / 1e6:.2f} MB, "
          f"figures and images {(size - js) / 1e6:.2f} MB, {figures} figures)")


if __name__ == "__main__":
    main()
