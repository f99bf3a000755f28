"""A study at scale on the classroom model: held-out prompts through ``diffviz batch``, read by
``diffviz.study``.

    python benchmarks/study_scale.py prompts runs/scale/prompts.csv --n 1008
    OMP_NUM_THREADS=1 nice -n 10 timeout 40m diffviz batch runs/scale/prompts.csv --out runs/scale/dir
    python benchmarks/study_scale.py report runs/scale/dir [--json out.json]

The prompts are the classroom's held-out captions (``diffviz.classroom.held_out_prompts()``: 12 single
objects with a size word, 60 pairs with a relation; training never used them) crossed with seeds 0, 1, ...,
seed-major, so that any prefix of the file is balanced over the captions. ``batch`` resumes, so a run cut
short by ``timeout`` can be continued, and ``report`` reads whatever is done. It prints the mIoU (each
colour, shape and size word's heat map against its object's mask as the judge finds it; words whose object
was not drawn are left out and counted) by word class and by step window, relation accuracy by relation,
the time per item from the index and the disk used.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffviz import classroom
from diffviz.batch import read_index
from diffviz.classroom import held_out_prompts
from diffviz.studies import study


def write_prompts(path: Path, n: int) -> None:
    singles, twos = held_out_prompts()
    captions = singles + twos
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["prompt", "seed"])
        for i in range(n):
            out.writerow([captions[i % len(captions)], i // len(captions)])
    print(f"{n} items ({len(captions)} held-out captions x {-(-n // len(captions))} seeds) -> {path}")


def report(folder: Path) -> dict:
    index = read_index(folder)
    df = study(folder, grader=classroom.grader, progress=True)
    ok = index[index["status"] == "ok"]
    words = df[df["word_class"].isin(["colour", "shape", "size"])]
    windows = sorted(c.removeprefix("iou_") for c in df.columns if c.startswith("iou_w"))
    by_class = {c: {"miou": float(g["iou"].mean()), "n": int(g["iou"].notna().sum()),
                    "object_missing": int(g["iou"].isna().sum())} for c, g in words.groupby("word_class")}
    by_window = {"all": float(words["iou"].mean())} | {w: float(words[f"iou_{w}"].mean()) for w in windows}
    by_window_class = {w: {c: float(g[f"iou_{w}"].mean()) for c, g in words.groupby("word_class")}
                       for w in windows}
    items = df.drop_duplicates("id")
    pairs = items.dropna(subset=["relation"])
    rel = pairs.groupby("relation")["relation_ok"].agg(["mean", "size"])
    drawn = pairs[pairs["objects_ok"].astype(bool)].groupby("relation")["relation_ok"].agg(["mean", "size"])
    disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    result = {
        "items_ok": len(ok), "items_error": int((index["status"] != "ok").sum()),
        "seconds_per_item_median": float(ok["seconds"].median()), "seconds_total": float(ok["seconds"].sum()),
        "wall_seconds": float((ok["finished"].max() - ok["finished"].min()).total_seconds()),
        "disk_bytes": disk, "item_file_bytes_mean": float(ok["bytes"].mean()),
        "miou_by_class": by_class, "miou_by_window": by_window, "miou_by_window_and_class": by_window_class,
        "windows": df.attrs["windows"],
        "relation_accuracy": {r: {"accuracy": float(v["mean"]), "n": int(v["size"])}
                              for r, v in rel.iterrows()},
        "relation_accuracy_both_drawn": {r: {"accuracy": float(v["mean"]), "n": int(v["size"])}
                                         for r, v in drawn.iterrows()},
        "two_object_correct": float(items.dropna(subset=["relation"])["correct"].mean()),
        "single_object_correct": float(items[items["relation"].isna()]["correct"].mean()),
    }
    print(f"{result['items_ok']} items ok, {result['items_error']} errors; "
          f"median {result['seconds_per_item_median']:.2f} "
          f"s/item (generate + trace + summary + save), {result['seconds_total'] / 60:.1f} min of item time, "
          f"{result['wall_seconds'] / 60:.1f} min first to last item; disk {disk / 1e6:.1f} MB "
          f"({result['item_file_bytes_mean'] / 1e3:.1f} kB per item file)")
    print("mIoU by word class (all steps): " + ", ".join(
        f"{c} {v['miou']:.3f} (n={v['n']}, object missing {v['object_missing']})"
        for c, v in by_class.items()))
    print("mIoU by step window (colour+shape+size words): "
          + ", ".join(f"{w} {v:.3f}" for w, v in by_window.items())
          + f"   windows {result['windows']}")
    for w, v in by_window_class.items():
        print(f"  {w}: " + ", ".join(f"{c} {x:.3f}" for c, x in v.items()))
    print("relation accuracy (judge): " + ", ".join(
        f"{r} {v['accuracy']:.1%} (n={v['n']})" for r, v in result["relation_accuracy"].items()))
    print("  where both objects were drawn: " + ", ".join(
        f"{r} {v['accuracy']:.1%} (n={v['n']})" for r, v in result["relation_accuracy_both_drawn"].items()))
    print(f"fully correct: single objects {result['single_object_correct']:.1%}, "
          f"two objects {result['two_object_correct']:.1%}")
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prompts")
    p.add_argument("path", type=Path)
    p.add_argument("--n", type=int, default=1008)
    r = sub.add_parser("report")
    r.add_argument("dir", type=Path)
    r.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "prompts":
        write_prompts(args.path, args.n)
    else:
        result = report(args.dir)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
