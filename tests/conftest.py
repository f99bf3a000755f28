"""Shared fixtures: tiny pipelines built from config (no downloads) and traces made with them.

Pipelines are session-scoped and read-only: tests may trace them (diffviz restores them) but
must not change their weights or attributes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffviz
from diffviz.classroom import data
from diffviz.testing import tiny_pipeline

# Tiny models: one intra-op thread is as fast alone and 10-20x faster on a busy machine.
torch.set_num_threads(1)
PROMPT = "a red circle left of a blue square"


def generate(pipe, prompt: str = PROMPT, steps: int = 4, seed: int = 0, **kwargs):
    """One image from ``pipe`` with a fixed seed, 64x64."""
    return pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                height=64, width=64, **kwargs).images[0]


def trace_failing_mid_generation(pipe, run) -> None:
    """Trace ``run()`` (a call of ``pipe``) while its denoiser raises at its second call, and assert that the
    pipeline is left as it was: processors, scheduler, VAE and hooks."""
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    saved = dict(denoiser.attn_processors)
    calls = []

    def boom(module, args):  # the second denoiser call fails, mid-generation
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("denoiser failed")

    handle = denoiser.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="denoiser failed"), diffviz.trace(pipe):
            run()
    finally:
        handle.remove()
    assert denoiser.attn_processors == saved
    assert "step" not in vars(pipe.scheduler) and "decode" not in vars(pipe.vae)
    assert not denoiser._forward_pre_hooks and not denoiser._forward_hooks


def printed_answer(solution, name: str, capsys, result: str | tuple[str, ...] = "answer", **names):
    """Run a lesson's solution ``name`` as it prints, on the names the notebook has there; -> the value it
    gives ``result`` (a tuple of names: their values)."""
    capsys.readouterr()
    solution(name)
    exec(capsys.readouterr().out, names)  # noqa: S102 (the lesson's own printed solution)
    return tuple(names[r] for r in result) if isinstance(result, tuple) else names[result]


def training_picture(prompt: str, seed: int = 0) -> np.ndarray:
    """[H, W, 3] uint8 training picture of a classroom ``prompt`` (unsized objects drawn large): made by
    the data generator, so its content is known and the judge finds it right."""
    objects, relation = data.parse_caption(prompt)
    objects = [data.Obj(o["shape"], o["colour"], o["size"] or "large") for o in objects]
    return data.make_scene(objects, relation, np.random.default_rng(seed)).image


def _pipe(kind: str, scheduler: str):
    pipe = tiny_pipeline(kind, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sd_pipe():
    return _pipe("sd", "ddim")


@pytest.fixture(scope="session")
def sdxl_pipe():
    return _pipe("sdxl", "euler")


@pytest.fixture(scope="session", params=["ddim", "euler", "dpm"])
def sd_pipe_any_scheduler(request):
    return _pipe("sd", request.param)


@pytest.fixture(scope="session")
def traced6(sd_pipe):
    """The trace of PROMPT on the tiny SD pipeline, 6 DDIM steps, guidance 7.5 (the lessons' checks)."""
    with diffviz.trace(sd_pipe) as tr:
        generate(sd_pipe, steps=6)
    return tr


@pytest.fixture(scope="session")
def traced(sd_pipe):
    """(image, trace) of PROMPT on the tiny SD pipeline, 4 DDIM steps, guidance 7.5."""
    with diffviz.trace(sd_pipe) as run:
        image = generate(sd_pipe)
    return image, run.trace
