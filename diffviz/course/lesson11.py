"""Checks and helpers for lesson 11, a video's frames (notebooks/11_video.ipynb).

The lesson runs on a tiny Wan 2.1 pipeline with random weights built from config (no download) and on the
checkpoint named by ``DIFFVIZ_VIDEO_MODEL`` when it is set. Each check recomputes the answer from the
student's own trace, so it holds on either. ``solution("latent_frame")``
prints the exercise's worked answer.
"""

from __future__ import annotations

import torch

from ..traces import Trace
from . import Solutions, verdict

VIDEO_MODEL_ENV = "DIFFVIZ_VIDEO_MODEL"


def frame_shares(trace: Trace, word: str | int) -> torch.Tensor:
    """[frame] float32 summing to 1: each latent frame's share of ``word``'s attention (its unnormalised
    heat map's mean over the frame), over the whole generation."""
    mass = trace.word_heatmap(word, normalize=False).flatten(1).mean(1)
    return mass / mass.sum()


def check_latent_frame(answer: tuple[int, list[int]] | None, trace: Trace, output_frame: int) -> bool:
    """The exercise: (the latent frame that output frame ``output_frame`` comes from, the output frames that
    latent frame decodes to, as a list)."""
    k = trace.latent_frame_of(output_frame)
    right = (k, list(trace.output_frames_of(k)))
    try:
        ok = answer is not None and (int(answer[0]), [int(f) for f in answer[1]]) == right
    except (TypeError, ValueError, IndexError):
        ok = False
    return verdict(answer, ok, f"output frame {output_frame} is in latent frame {k}, with output frames "
                               f"{right[1]}.",
                   f"the first output frame has a latent frame of its own; after it, each latent frame holds "
                   f"{trace.temporal_compression} output frames in a row. Answer (latent frame, [its output "
                   "frames]).")


solution = Solutions(latent_frame="""\
c = tr.temporal_compression  # output frames per latent frame, after the first one
if FRAME == 0:  # the first output frame has latent frame 0 to itself
    answer = (0, [0])
else:  # output frames 1..c are latent frame 1, c+1..2c latent frame 2, ...
    k = (FRAME - 1) // c + 1
    answer = (k, list(range(1 + (k - 1) * c, 1 + k * c)))""")
