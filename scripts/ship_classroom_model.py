"""Ship a CPU training run's model (``scripts/train_classroom_cpu.sh``) if it beats the shipped one.

    python scripts/ship_classroom_model.py RUN [--dry-run]

RUN holds ``model/`` (the trained pipeline), ``quality.json`` (its ``benchmarks/classroom_quality.py``
report), ``quality_shipped.json`` (the shipped model's, scored alike) and
``ckpt/snapshots/step_*/quality.json`` (the learning curve). Of single-object and two-object faithfulness
and the word-map IoU on correctly drawn images, each with its 95% interval (``classroom_recipes.intervals``),
the model is shipped only when none is worse (the shipped score above the new one's interval) and at least one
is better (the shipped score below it): a difference inside the interval is noise, and churning the course's
findings for it buys nothing. The learning curve goes beside it as ``quality_curve.json``: a run
started from another (``--init-from``, a committed ``checkpoints/`` folder) carries that run's curve first, so
the curve covers every sample the shipped weights have seen.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from classroom_recipes import intervals
from unpack_classroom_run import install

ROOT = Path(__file__).resolve().parents[1]

METRICS = {"single-object": "single", "two-object": "two", "word-map IoU": "iou"}


def compare(new: dict, old: dict) -> dict[str, tuple[tuple[float, float, float], float, str]]:
    """``{metric: ((new, low, high), shipped, verdict)}`` for the metrics that decide, from two
    ``classroom_quality`` reports; the verdict is "better", "WORSE" or "same" (the shipped score inside the
    new one's 95% interval)."""
    new_rows, old_rows = intervals(new), intervals(old)
    scores = {}
    for name, key in METRICS.items():
        (value, low, high), shipped = new_rows[key], old_rows[key][0]
        scores[name] = ((value, low, high), shipped,
                        "better" if shipped < low else "WORSE" if shipped > high else "same")
    return scores


def ships(scores: dict) -> bool:
    """Whether ``compare``'s verdicts ship the new model: none worse, one better."""
    verdicts = [verdict for _, _, verdict in scores.values()]
    return "WORSE" not in verdicts and "better" in verdicts


def samples_before(log: dict) -> int:
    """Samples seen by the runs that the run of ``log`` (a ``training_log.json``) started from, all of them
    (``init_from``, recursively)."""
    parent = log["recipe"].get("init_from")
    if not parent:
        return 0
    parent_log = json.loads((ROOT / parent / "training_log.json").read_text())
    return samples_before(parent_log) + parent_log["samples_seen"]


def lineage_curve(snapshots: list[Path], log: dict) -> list[dict]:
    """The snapshots' scores (``quality.json`` files of one run whose ``training_log.json`` is ``log``), after
    those of the run it started from, recursively. Each row: the run's preset, its own ``step``, ``samples``
    seen since the first run began, and the scores."""
    recipe = log["recipe"]
    before, offset = [], samples_before(log)
    if recipe.get("init_from"):
        parent = ROOT / recipe["init_from"]
        parent_log = json.loads((parent / "training_log.json").read_text())
        before = lineage_curve(sorted(parent.glob("snapshots/step_*/quality.json")), parent_log)
    rows = [dict(run=recipe.get("preset") or "", step=int(path.parent.name.split("_")[1]),
                 samples=offset + int(path.parent.name.split("_")[1]) * log["batch"],
                 **json.loads(path.read_text()))
            for path in snapshots]
    return before + rows


def main(argv=None) -> bool:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="compare only")
    args = ap.parse_args(argv)
    scores = compare(json.loads((args.run / "quality.json").read_text()),
                     json.loads((args.run / "quality_shipped.json").read_text()))
    for name, ((new, low, high), old, verdict) in scores.items():
        print(f"{name:<14} new {new:.3f} [{low:.3f}, {high:.3f}]  shipped {old:.3f}  {verdict}")
    better = ships(scores)
    if not better or args.dry_run:
        why = "dry run" if better else "the new model is worse on a metric, or better on none"
        print(f"not shipped: {why}")
        return False
    curve = lineage_curve(sorted(args.run.glob("ckpt/snapshots/step_*/quality.json")),
                          json.loads((args.run / "model" / "training_log.json").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / "weights"
        shutil.copytree(args.run / "model", new)
        (new / "quality_curve.json").write_text(json.dumps(curve, indent=1))
        install(new)
    return True


if __name__ == "__main__":
    main()
