"""The learning curve of a CPU training run as a picture (for TRAINING.md).

    python scripts/plot_learning_curve.py RUN [--out diffviz/classroom/weights/learning_curve_v3.png]
        [--reference NAME=quality.json ...]

RUN is a ``scripts/train_classroom_cpu.sh`` folder: ``ckpt/state/progress.json`` holds the logged training
loss, ``ckpt/args.json`` the batch, and ``ckpt/snapshots/step_*/quality.json`` the held-out scores of each
snapshot (``benchmarks/classroom_quality.py``); a chain's earlier stages (``RUN/<preset>/ckpt``) come first,
end to end, a dashed line where each stage ends. Left: the loss against samples seen; right: single- and
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


def stages(run: Path) -> list[Path]:
    """The checkpoints of RUN's training, first to last: ``ckpt/`` and, for a chain of presets, the stages it
    started from (``init_from``) that are folders of RUN."""
    chain = [run / "ckpt"]
    while True:
        parent = json.loads((chain[0] / "training_log.json").read_text())["recipe"].get("init_from")
        if not parent or run.resolve() not in Path(parent).resolve().parents:
            return chain
        chain.insert(0, Path(parent))


def figure(run: Path, references: dict[str, dict]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss (min-SNR weighted)",
                                                        "held-out prompts, the classroom judge"))
    losses, points, ends, offset = [], [], [], 0
    for ckpt in stages(run):  # each stage's samples counted on from the stages before it
        batch = int(json.loads((ckpt / "args.json").read_text())["batch"])
        progress = json.loads((ckpt / "state/progress.json").read_text())
        losses += [((offset + s * batch) / 1e6, loss) for s, loss, _ in progress["log"]]
        points += [((offset + int(p.parent.name.split("_")[1]) * batch) / 1e6, json.loads(p.read_text()))
                   for p in sorted(ckpt.glob("snapshots/step_*/quality.json"))]
        offset += progress["step"] * batch
        ends.append(offset / 1e6)
    fig.add_scatter(x=[x for x, _ in losses], y=[v for _, v in losses], mode="lines", name="loss",
                    line={"color": "#555"}, row=1, col=1)
    for colour, (label, (group, key)) in zip(COLOURS, SCORES.items()):
        fig.add_scatter(x=[x for x, _ in points], y=[q[group][key] for _, q in points], mode="lines+markers",
                        name=label, line={"color": colour}, row=1, col=2)
        for ref_name, ref in references.items():
            fig.add_hline(y=ref[group][key], line={"color": colour, "dash": "dot", "width": 1}, row=1, col=2,
                          annotation_text=f"{ref_name}: {ref[group][key]:.2f}", annotation_font_size=10)
    for end in ends[:-1]:  # where a stage of a chain ends (after the data: plotly skips empty panels)
        for col in (1, 2):
            fig.add_vline(x=end, line={"color": "#999", "dash": "dash", "width": 1}, row=1, col=col)
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
