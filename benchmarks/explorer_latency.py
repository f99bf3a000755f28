"""Explorer update latency per interaction, and the HTML report's size.

    python benchmarks/explorer_latency.py [--steps 25] [--reps 3] [--trace run.dvz | --sd15]

Traces a tiny random-weight SD pipeline (64x64, 25 DDIM steps, every head kept) unless --trace
gives a saved trace (or --sd15 a random one with Stable Diffusion 1.5's shapes: 512x512 px, 16
layers from 64x64 to 8x8, 11 words, 50 steps, head mean), builds ``diffviz.explore(trace)`` and
times each kind of interaction as the kernel sees it: setting a control's value runs its
observer, which recomputes from the trace and updates the FigureWidget, synchronously; "play
(frames)" is what pressing play costs the kernel (every step of the selection, sent once; the page
then plays them alone), and "(compare)" an explorer of two traces. What the browser then needs to
redraw is not included (tests/test_browser.py prints that end to end, and a step of play).
Then writes the report and prints its size.
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
from diffviz.traces import Layer, Token, Trace
from diffviz.viz import explore, report

BUDGET_MS = 100


def make_trace(steps: int):
    pipe = tiny_pipeline("sd", "ddim")
    pipe.set_progress_bar_config(disable=True)
    with diffviz.trace(pipe, heads=True) as tr:
        pipe("a red circle left of a blue square", num_inference_steps=steps, height=64, width=64,
             generator=torch.Generator().manual_seed(0))
    return tr


def sd15_shaped(steps: int = 50) -> Trace:
    """Random data in the shapes a default capture of SD 1.5 at 512x512 holds (no model involved)."""
    words = ["a", "photo", "of", "an", "astronaut", "riding", "a", "horse", "on", "the", "moon"]
    blocks = [("down_blocks.0", 64, 2), ("down_blocks.1", 32, 2), ("down_blocks.2", 16, 2),
              ("mid_block", 8, 1), ("up_blocks.1", 16, 3), ("up_blocks.2", 32, 3), ("up_blocks.3", 64, 3)]
    layers = [Layer(f"{b}.attentions.{i}.transformer_blocks.0.attn2", (s, s), 8)
              for b, s, n in blocks for i in range(n)]
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(steps + 1, 4, 64, 64, generator=g)
    return Trace(
        prompt=" ".join(words), negative_prompt=None, words=words,
        tokens=[Token(i + 1, f"{w}</w>", i) for i, w in enumerate(words)], layers=layers,
        height=512, width=512, guidance_scale=7.5, timesteps=torch.linspace(981, 1, steps).round(),
        alpha_bar=torch.linspace(0.01, 0.99, steps), sigma=torch.linspace(10, 0.1, steps),
        latents=lat, x0=lat[1:] * 0.5, noise_cond=lat[:-1], noise_uncond=lat[1:],
        attn={l.name: torch.rand(steps, 1, len(words), *l.size, generator=g).half() for l in layers},
        image=(torch.rand(512, 512, 3, generator=g) * 255).to(torch.uint8),
        preview_weight=torch.tensor([[0.2, 0.1, 0.0, -0.1, 0.5]] * 3), scheduler={"name": "random"},
        options={"heads": False})


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
    ap.add_argument("--sd15", action="store_true", help="a random trace with SD 1.5's shapes (50 steps)")
    args = ap.parse_args()
    if args.trace:
        tr = diffviz.load_trace(args.trace)
    else:
        tr = sd15_shaped() if args.sd15 else make_trace(args.steps)

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
    results["step, first visit"] = timed(app.step, list(range(1, n)) + [0])  # PNGs were encoded at build
    results["step (play)"] = timed(app.step, list(range(n)) * args.reps)
    results["step (jumps)"] = timed(app.step, [(k * 7) % n for k in range(n)] * args.reps)
    results["words"] = timed(app.words, words * args.reps)
    results["layers"] = timed(app.layers, layers * args.reps)
    app.layers.value = "all"
    heads = [v for _, v in app.heads.options]
    if len(heads) > 1:
        results["head"] = timed(app.heads, heads * args.reps)
    results["opacity"] = timed(app.opacity, [0.1 * k for k in range(11)] * args.reps)
    results["colour scale"] = timed(app.scale, ["fit", "fixed"] * (2 * args.reps))
    play_ms = []
    for _ in range(args.reps):  # what pressing play costs the kernel: every step's frame for the page
        t0 = time.perf_counter()
        app.frames()
        play_ms.append((time.perf_counter() - t0) * 1000)
    results["play (frames)"] = play_ms
    both = explore(tr, compare=tr)  # two rows on one slider (the same trace twice: the same shapes)
    results["step (compare)"] = timed(both.step, list(range(n)) * args.reps)
    results["words (compare)"] = timed(both.words, words * args.reps)

    print(f"explorer on {tr!r}")
    print(f"  torch threads {torch.get_num_threads()} (updates run on one), "
          f"build {build_ms[0]:.0f} ms first, {build_ms[1]:.0f} ms again")
    print(f"  {'interaction':20s} {'n':>4s} {'median':>8s} {'p95':>8s} {'max':>8s}   "
          f"(ms, budget {BUDGET_MS})")
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
