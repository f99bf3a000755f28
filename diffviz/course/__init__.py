"""Support for the notebooks in notebooks/: exercise checks, one module per lesson.

Every check returns True or False and prints a verdict a student can act on. An unanswered
exercise (``None``) prints a hint and returns False without raising, so a notebook runs top to
bottom before the student has answered anything.
"""

from __future__ import annotations

import os

import torch

from ..pipelines import MODEL_ENV

ON_CLASSROOM_MODEL = not os.environ.get(MODEL_ENV)  # lessons adapt their prompts to the model


def verdict(answer, ok: bool, right: str, hint: str) -> bool:
    """Print and return the outcome of one exercise check."""
    if answer is None:
        print(f"Not answered yet. Hint: {hint}")
        return False
    print(f"✓ Right: {right}" if ok else f"✗ Not yet. Hint: {hint}")
    return bool(ok)


def tensor_answer(answer, ref: torch.Tensor, hint: str) -> tuple[bool, str]:
    """Is ``answer`` a tensor of ``ref``'s shape, equal to it up to float16 rounding? -> (ok, hint)."""
    if answer is None:
        return False, hint
    a = torch.as_tensor(answer).float()
    if tuple(a.shape) != tuple(ref.shape):
        return False, f"your tensor has shape {list(a.shape)}, not {list(ref.shape)}. " + hint
    return bool((a - ref).norm() <= 2e-3 * ref.norm() + 1e-6), hint
