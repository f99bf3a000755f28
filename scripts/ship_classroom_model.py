"""Ship a CPU training run's model (``scripts/train_classroom_cpu.sh``) if it beats the shipped one on every
metric.

    python scripts/ship_classroom_model.py RUN [--dry-run]

RUN holds ``model/`` (the trained pipeline), ``quality.json`` (its ``benchmarks/classroom_quality.py``
report), ``quality_shipped.json`` (the shipped model's, scored alike) and
``ckpt/snapshots/step_*/quality.json`` (the learning curve). The model is shipped only when single-object
and two-object faithfulness and the word-map IoU on correctly drawn images are all higher, a metric both
models have at its ceiling (100%) aside; the learning curve goes beside it as ``quality_curve.json``: a run
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

from unpack_classroom_run import install

ROOT = Path(__file__).resolve().parents[1]

METRICS = {"single-object": ("single", "correct"), "two-object": ("two", "correct"),
           "word-map IoU": ("localisation", "miou_correct_images")}


def compare(new: dict, old: dict) -> dict[str, tuple[float, float]]:
    """``{metric: (new, shipped)}`` for the metrics that decide."""
    return {name: (new[a][b], old[a][b]) for name, (a, b) in METRICS.items()}


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
    for name, (new, old) in scores.items():
        verdict = "better" if new > old else "at the ceiling, as shipped" if new == old == 1 else "NOT better"
        print(f"{name:<14} new {new:.3f}  shipped {old:.3f}  {verdict}")
    # better on every metric, except one both models have at its ceiling (100%: nothing left to beat)
    better = all(new > old or new == old == 1 for new, old in scores.values())
    if not better or args.dry_run:
        why = "dry run" if better else "the new model does not beat the shipped one on every metric"
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
