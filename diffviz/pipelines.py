"""Which pipelines diffviz can trace, and loading a real checkpoint from a local folder."""

from __future__ import annotations

import os
from pathlib import Path

import torch

SUPPORTED = (
    "StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, "
    "StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline "
    "(any diffusers pipeline with a UNet2DConditionModel and a CLIP text encoder)"
)


def check_pipeline(pipe) -> torch.nn.Module:
    """Return ``pipe.unet`` if diffviz can trace ``pipe``; otherwise a TypeError naming what is supported."""
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "attn_processors"):
        raise TypeError(f"diffviz traces pipelines with a UNet (pipe.unet); {type(pipe).__name__} has none. "
                        f"Supported: {SUPPORTED}.")
    if getattr(pipe, "text_encoder", None) is None and getattr(pipe, "text_encoder_2", None) is None:
        raise TypeError(f"{type(pipe).__name__} has no text encoder, so there are no words to trace. "
                        f"Supported: {SUPPORTED}.")
    return unet


MODEL_ENV = "DIFFVIZ_MODEL"
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "dpm": "DPMSolverMultistepScheduler"}


def scheduler_class(name: str):
    """The diffusers scheduler class for "ddim", "euler" or "dpm" (DPM-Solver++)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, not {name!r}.")
    return getattr(diffusers, SCHEDULERS[name])


def set_scheduler(pipe, name: str) -> None:
    """Swap ``pipe``'s sampler for ``name`` ("ddim", "euler", "dpm"), keeping the model's noise schedule."""
    pipe.scheduler = scheduler_class(name).from_config(pipe.scheduler.config)


def load_pipeline(path: str | Path | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None):
    """Load a diffusers pipeline saved in the local folder ``path`` (never downloads).

    With no ``path``: the folder named by the environment variable ``DIFFVIZ_MODEL`` if it is set,
    else the bundled classroom model (on the CPU) — the one switch the notebooks use.
    ``device``: default "cuda" when available, else "cpu". ``dtype``: default float16 on CUDA,
    float32 on CPU (half precision is slow or unsupported there).
    """
    from diffusers import DiffusionPipeline

    if path is None:
        path = os.environ.get(MODEL_ENV) or None
        if path is None:
            from .classroom import load_pipeline as classroom

            return classroom(device=device or "cpu")
    folder = Path(path).expanduser()
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no model folder at {str(folder)!r}. Give the path of a diffusers checkpoint folder (the one "
            "holding model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. from "
            "`huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir PATH` "
            "on a machine with internet; or use diffviz.classroom.load_pipeline() for the bundled model."
        )
    if not index.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a diffusers pipeline folder: it has no model_index.json. A single-file "
            "checkpoint (.safetensors/.ckpt) must first be converted with diffusers' "
            "`from_single_file(...).save_pretrained(PATH)`."
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
    check_pipeline(pipe)
    return pipe.to(device)
