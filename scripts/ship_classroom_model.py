"""Ship a CPU training run's model (``scripts/train_classroom_cpu.sh``) if it beats the shipped one on every
metric.

    python scripts/ship_classroom_model.py RUN [--dry-run]

RUN holds ``model/`` (the trained pipeline), ``quality.json`` (its ``benchmarks/classroom_quality.py``
report), ``quality_shipped.json`` (the shipped model's, scored alike) and
``ckpt/snapshots/step_*/quality.json`` (the learning curve). The model is shipped only when single-object
and two-object faithfulness and the word-map IoU on correctly drawn images are all higher, a metric both
models have at its ceiling (100%) aside; the learning curve goes beside it as ``quality_curve.json``.
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

METRICS = {"single-object": ("single", "correct"), "two-object": ("two", "correct"),
           "word-map IoU": ("localisation", "miou_correct_images")}


def compare(new: dict, old: dict) -> dict[str, tuple[float, float]]:
    """``{metric: (new, shipped)}`` for the metrics that decide."""
    return {name: (new[a][b], old[a][b]) for name, (a, b) in METRICS.items()}


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
    curve = []
    for path in sorted(args.run.glob("ckpt/snapshots/step_*/quality.json")):
        curve.append(dict(step=int(path.parent.name.split("_")[1]), **json.loads(path.read_text())))
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / "weights"
        shutil.copytree(args.run / "model", new)
        (new / "quality_curve.json").write_text(json.dumps(curve, indent=1))
        install(new)
    return True


if __name__ == "__main__":
    main()
