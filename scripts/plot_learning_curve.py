"""The learning curve of a CPU training run as a picture (for TRAINING.md).

    python scripts/plot_learning_curve.py RUN [--out diffviz/classroom/weights/learning_curve_v3.png]
        [--reference NAME=quality.json ...]

RUN is a ``scripts/train_classroom_cpu.sh`` folder: ``ckpt/state/progress.json`` holds the logged training
loss, ``ckpt/args.json`` the batch, and ``ckpt/snapshots/step_*/quality.json`` the held-out scores of each
snapshot (``benchmarks/classroom_quality.py``). Left: the loss against samples seen; right: single- and
two-object faithfulness and the word-map IoU of each snapshot, with the ``--reference`` models' scores
(e.g. the shipped v1) as dotted lines. Needs plotly and kaleido with a Chromium (the dev extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

SCORES = {"single object right": ("single", "correct"), "two objects right": ("two", "correct"),
          "word-map IoU (right images)": ("localisation", "miou_correct_images")}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c")


def figure(run: Path, references: dict[str, dict]) -> go.Figure:
    progress = json.loads((run / "ckpt/state/progress.json").read_text())
    batch = int(json.loads((run / "ckpt/args.json").read_text())["batch"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss (min-SNR weighted)",
                                                        "held-out prompts, the classroom judge"))
    steps, losses = zip(*[(s, loss) for s, loss, _ in progress["log"]])
    fig.add_scatter(x=[s * batch / 1e6 for s in steps], y=losses, mode="lines", name="loss",
                    line={"color": "#555"}, row=1, col=1)
    snaps = sorted(run.glob("ckpt/snapshots/step_*/quality.json"))
    points = [(int(p.parent.name.split("_")[1]) * batch / 1e6, json.loads(p.read_text())) for p in snaps]
    for colour, (label, (group, key)) in zip(COLOURS, SCORES.items()):
        fig.add_scatter(x=[x for x, _ in points], y=[q[group][key] for _, q in points], mode="lines+markers",
                        name=label, line={"color": colour}, row=1, col=2)
        for ref_name, ref in references.items():
            fig.add_hline(y=ref[group][key], line={"color": colour, "dash": "dot", "width": 1}, row=1, col=2,
                          annotation_text=f"{ref_name}: {ref[group][key]:.2f}", annotation_font_size=10)
    fig.update_xaxes(title_text="samples seen (millions)")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(width=1100, height=420, margin={"t": 50, "l": 60, "r": 20, "b": 50},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=Path("diffviz/classroom/weights/learning_curve_v3.png"))
    ap.add_argument("--reference", nargs="*", default=[], metavar="NAME=PATH",
                    help="quality.json files of models to draw as dotted lines, e.g. "
                         "v1=RUN/quality_shipped.json")
    args = ap.parse_args(argv)
    references = {name: json.loads(Path(path).read_text())
                  for name, path in (r.split("=", 1) for r in args.reference)}
    figure(args.run, references).write_image(args.out, scale=1)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
