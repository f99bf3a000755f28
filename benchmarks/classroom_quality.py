"""Quality of the classroom model on prompts that were never training captions.

    python benchmarks/classroom_quality.py [--weights DIR] [--seeds 2] [--json out.json]

Prints (bars from issue 3 in brackets):
- single-object faithfulness: right colour and shape, nothing else drawn          [>= 95%]
- two-object faithfulness: both objects and the relation right                     [>= 80%]
- attention localisation: for two-object prompts, each colour and shape word's heat map
  (``diffviz.trace`` defaults: head mean, all steps) thresholded at 0.4 of its max, IoU
  against the mask of the object the judge found for it; mean over correctly drawn images [>= 0.6]
- diversity: spread of object centres and sizes over seeds where the prompt leaves them free.
The prompts come from ``diffviz.classroom.held_out_prompts()``, which training excludes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffviz.classroom import data
from diffviz.classroom import judge as judge_mod
from diffviz.classroom.model import load_pipeline

THRESHOLD = 0.4


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 16):
    """[(prompt, seed, image uint8 [H, W, 3])] with one generator per image (same image as one-at-a-time)."""
    jobs = [(p, s) for p in prompts for s in seeds]
    out = []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        gens = [torch.Generator().manual_seed(s) for _, s in chunk]
        images = pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                      generator=gens, output_type="np").images
        out += [(p, s, (img * 255).round().astype(np.uint8)) for (p, s), img in zip(chunk, images)]
    return out


def faithfulness(results) -> dict:
    verdicts = [judge_mod.judge(p, img) for p, _, img in results]
    n = len(verdicts)
    return {
        "n": n,
        "correct": sum(v["correct"] for v in verdicts) / n,
        "objects_ok": sum(v["objects_ok"] for v in verdicts) / n,
        "count_ok": sum(v["count_ok"] for v in verdicts) / n,
        "relation_ok": ((sum(bool(v["relation_ok"]) for v in verdicts) / n)
                        if verdicts[0]["relation_ok"] is not None else None),
        "size_ok": sum(v["size_ok"] for v in verdicts) / n,
    }, verdicts


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def localisation(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> dict:
    """mIoU of colour/shape word maps vs the judge's object masks (two-object prompts)."""
    import diffviz

    all_ious, correct_ious, per_kind = [], [], {"colour": [], "shape": []}
    per_head: dict[tuple[str, int], list[float]] = {}  # diagnostic: one layer, one head
    per_res: dict[str, list[float]] = {}  # diagnostic: head mean over the layers of one resolution
    missing = 0
    for prompt in prompts:
        for seed in seeds:
            with diffviz.trace(pipe, heads=True) as tr:
                img = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                           generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
            img = (img * 255).round().astype(np.uint8)
            verdict = judge_mod.judge(prompt, img)
            for wi, (word, obj) in enumerate(data.word_objects(prompt)):
                kind = "colour" if word in data.COLOURS else "shape" if word in data.SHAPES else None
                if kind is None:
                    continue
                found = verdict["matched"][obj]
                if found is None:
                    missing += 1
                    continue
                heat = tr.word_heatmap(wi).numpy()
                value = iou(heat >= THRESHOLD * heat.max(), found.mask)
                all_ious.append(value)
                per_kind[kind].append(value)
                if verdict["correct"]:
                    correct_ious.append(value)
                for res in sorted({layer.resolution for layer in tr.layers}):
                    h = tr.word_heatmap(wi, layers=res).numpy()
                    per_res.setdefault(res, []).append(iou(h >= THRESHOLD * h.max(), found.mask))
                for layer in tr.layers:
                    for head in range(tr.attn[layer.name].shape[1]):
                        h = tr.word_heatmap(wi, layers=layer.name, heads=head).numpy()
                        per_head.setdefault((layer.name, head), []).append(
                            iou(h >= THRESHOLD * h.max(), found.mask))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")
    return {"miou": mean(all_ious), "miou_correct_images": mean(correct_ious),
            "ious_correct_images": correct_ious, "n_words": len(all_ious),
            "words_without_object": missing, "miou_colour": mean(per_kind["colour"]),
            "miou_shape": mean(per_kind["shape"]),
            "miou_by_resolution": {r: mean(v) for r, v in per_res.items()},
            "best_single_head": max(([f"{l}/head{h}", mean(v)] for (l, h), v in per_head.items()),
                                    key=lambda x: x[1], default=None)}


def diversity(pipe, steps: int, guidance: float, n_seeds: int = 8) -> dict:
    """Spread over seeds of object centres (px) and sizes for prompts that leave position and size free."""
    prompts = [f"a {c} {s}" for c in ("red", "green", "yellow") for s in data.SHAPES]
    results = generate(pipe, prompts, list(range(100, 100 + n_seeds)), steps, guidance)
    stds, large, distinct = [], [], []
    for prompt in prompts:
        found = [judge_mod.find_objects(img) for p, _, img in results if p == prompt]
        centres = np.array([f[0].centre for f in found if f])
        if len(centres) >= 2:
            stds.append(float(centres.std(axis=0).mean()))
        large += [f[0].size == "large" for f in found if f]
        imgs = np.stack([img for p, _, img in results if p == prompt]).astype(np.float32)
        distinct.append(float(np.abs(imgs[:, None] - imgs[None]).mean()))
    train = data.scenes(7, 400, image_size=results[0][2].shape[0])
    ref = np.array([s.centres[0] for s in train if len(s.objects) == 1])
    return {"centre_std_px": float(np.mean(stds)) if stds else 0.0,
            "training_data_centre_std_px": float(ref.std(axis=0).mean()),
            "share_large": float(np.mean(large)) if large else float("nan"),
            "mean_pairwise_pixel_diff": float(np.mean(distinct)), "prompts": len(prompts), "seeds": n_seeds}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="a save_pretrained folder (default: the shipped model)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--loc-prompts", type=int, default=30, help="two-object prompts used for the mIoU")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    pipe = load_pipeline(args.weights, device=args.device)
    singles, twos = data.held_out_prompts()
    seeds = list(range(args.seeds))
    single, _ = faithfulness(generate(pipe, singles, seeds, args.steps, args.guidance))
    two, _ = faithfulness(generate(pipe, twos, seeds, args.steps, args.guidance))
    loc = localisation(pipe, twos[: args.loc_prompts], seeds, args.steps, args.guidance)
    div = diversity(pipe, args.steps, args.guidance)
    report = {"weights": str(args.weights or "package"), "steps": args.steps, "guidance": args.guidance,
              "single": single, "two": two, "localisation": loc, "diversity": div,
              "seconds": round(time.time() - t0, 1)}
    print(f"single-object faithful: {single['correct']:.1%}  (colour+shape found {single['objects_ok']:.1%}, "
          f"size {single['size_ok']:.1%}; n={single['n']})  [bar 95%]")
    print(f"two-object faithful:    {two['correct']:.1%}  (both objects {two['objects_ok']:.1%}, "
          f"relation {two['relation_ok']:.1%}; n={two['n']})  [bar 80%]")
    print(f"attention mIoU:         {loc['miou_correct_images']:.3f} on correctly drawn images  [bar 0.6]  "
          f"(all images with the object found {loc['miou']:.3f}: colour {loc['miou_colour']:.3f}, shape "
          f"{loc['miou_shape']:.3f}; {loc['n_words']} words, "
          f"{loc['words_without_object']} without a drawn object)")
    print(f"  diagnostics: by resolution "
          f"{json.dumps({k: round(v, 3) for k, v in loc['miou_by_resolution'].items()})}; "
          f"best single head {loc['best_single_head']}")
    print(f"diversity:              centre std {div['centre_std_px']:.2f} px over seeds "
          f"(training data {div['training_data_centre_std_px']:.2f}), share large {div['share_large']:.2f}, "
          f"mean pixel diff between seeds {div['mean_pairwise_pixel_diff']:.1f}/255")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
