"""Size of a ``--keep summary`` file for an SDXL prompt (target: at most 1 MB), next to a full trace.

    python benchmarks/summary_size.py [--steps 30] [--windows 3]

1. Checks ``diffviz.summary.estimate_bytes`` against a real summary file of the tiny SDXL pipeline
   (``diffviz.testing.tiny_pipeline("sdxl")``, 64 px), and measures the JSON header that the file adds.
2. Applies it to SDXL's shapes at 1024 px: the cross-attention resolutions follow from SDXL's U-Net config
   (``full_size_pipeline("sdxl")``'s, built on the meta device: no weights, no memory), latents 4x128x128,
   the image stored at most ``MAX_IMAGE_SIDE`` px a side. The full trace's size comes from
   ``diffviz.estimate_bytes`` on the same meta U-Net in float16 (the dtype on a GPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffviz
from diffviz.summary import BITS, MAX_BYTES, MAX_IMAGE_SIDE, estimate_bytes, summarize
from diffviz.testing import SDXL_UNET, tiny_pipeline


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--windows", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    pipe = tiny_pipeline("sdxl", "euler")
    pipe.set_progress_bar_config(disable=True)
    prompt = "a photo of a large red circle left of a small blue square"
    with diffviz.trace(pipe) as tr:
        pipe(prompt, num_inference_steps=4, height=64, width=64, generator=torch.Generator().manual_seed(0))
    s = summarize(tr, args.windows)
    with tempfile.TemporaryDirectory() as tmp:
        size = s.save(Path(tmp) / "s.dvs").stat().st_size
    sizes = list(dict.fromkeys(l.size for l in tr.layers))
    est = estimate_bytes(len(tr.words), sizes, tuple(tr.x0.shape[1:]), (tr.height, tr.width), tr.num_steps,
                         args.windows)
    header = size - est
    print(f"tiny SDXL, 64 px, {len(tr.words)} words, maps {sizes}: file {size} B, estimate {est} B "
          f"(tensors; the estimate is exact: {est == s.nbytes}), JSON header {header} B")

    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET).to(torch.float16)
    latent = 1024 // 8
    # attention resolutions: one per down level with cross-attention, latent / 2**level
    maps = [(latent // 2**i, latent // 2**i)
            for i, t in enumerate(SDXL_UNET["down_block_types"]) if "CrossAttn" in t]
    # shapes only
    fake = types.SimpleNamespace(unet=unet, vae_scale_factor=8, text_encoder=unet, tokenizer=None)
    print(f"SDXL, 1024 px, {args.steps} steps, {args.windows} step windows, attention maps {maps}, "
          f"image stored "
          f"at {MAX_IMAGE_SIDE} px, header {header} B (as measured above):")
    for n_words in (8, 15, 25, 40, 50, 75):
        # as summarize() picks: the finest precision whose tensors fit MAX_BYTES
        tensors = {b: estimate_bytes(n_words, maps, (4, latent, latent), (1024, 1024), args.steps,
                                     args.windows, bits=b) for b in BITS}
        bits = next((b for b in BITS if tensors[b] <= MAX_BYTES), BITS[-1])
        summary = header + tensors[bits]
        full = diffviz.estimate_bytes(fake, 1024, 1024, args.steps, n_tokens=n_words)["total"]
        fits = "within" if summary <= 1e6 else "OVER"
        print(f"  {n_words:3d} words: summary {summary / 1e6:5.2f} MB, maps at {bits} bits ({fits} 1 MB; "
              f"{(header + tensors[8]) / 1e6:4.2f} MB at 8 bits)   full trace {full / 1e6:7.1f} MB   "
              f"ratio {full / summary:5.0f}x")


if __name__ == "__main__":
    main()
