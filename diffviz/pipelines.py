"""Loading a real checkpoint from a local folder, and the samplers diffviz offers (which pipelines it can
trace is the model family adapters' business: ``diffviz.capture.families``)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the first pipeline, so that `diffviz --help` starts at once
    import torch

MODEL_ENV = "DIFFVIZ_MODEL"
VIDEO_PIPELINES = ("Wan", "CogVideoX")  # pipeline class names of the video families
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
              "dpm": "DPMSolverMultistepScheduler"}


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
    if path is None:
        path = os.environ.get(MODEL_ENV) or None
        if path is None:
            from .classroom import load_pipeline as classroom

            return classroom(device=device or "cpu")
    folder = check_folder(Path(path).expanduser())
    name = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name", "")
    if name.startswith(VIDEO_PIPELINES):  # they keep modules in float32, which needs accelerate in diffusers
        from .extras import require

        require("video", f"loading a {name} checkpoint", ("accelerate",))
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    with quiet_loading():
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
    from .capture.families import family_of

    family_of(pipe)  # a TypeError naming what diffviz traces
    return pipe.to(device)


_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def check_folder(folder: Path) -> Path:
    """``folder`` if it looks like a complete diffusers pipeline folder; else FileNotFoundError naming
    what is wrong (no folder, a single-file checkpoint, no model_index.json, missing component folders)."""
    convert = ("convert it once on any machine with diffusers: `StableDiffusionPipeline.from_single_file("
               "FILE).save_pretrained(FOLDER)` (StableDiffusionXLPipeline for SDXL), then give FOLDER.")
    if folder.is_file():
        kind = "a single-file checkpoint" if folder.suffix.lower() in _CHECKPOINT_SUFFIXES else "a file"
        raise FileNotFoundError(f"{str(folder)!r} is {kind}, not a diffusers pipeline folder; {convert}")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no model folder at {str(folder)!r}. Give the path of a diffusers checkpoint folder (the one "
            "holding model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. from "
            "`huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir PATH` "
            "on a machine with internet; or use diffviz.classroom.load_pipeline() for the bundled model."
        )
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a diffusers pipeline folder: it has no model_index.json. "
            f"For a single-file checkpoint (.safetensors/.ckpt), {convert}"
        )
    try:
        components = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{str(index)!r} cannot be read as JSON ({err}); download the checkpoint "
                                "again.") from None
    if not isinstance(components, dict):
        raise FileNotFoundError(f"{str(index)!r} is not a diffusers model index (not a JSON object).")
    missing = [name for name, spec in components.items()
               if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2 and None not in spec
               and not (folder / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{str(folder)!r} has model_index.json but lacks the component folder(s) "
            f"{', '.join(m + '/' for m in missing)}: the download is incomplete. "
            "Download the whole checkpoint folder again (every subfolder model_index.json names)."
        )
    return folder


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence what loading prints that a user cannot act on (progress bars per component and per
    weight file, deprecation and backend notices of diffusers and transformers) while it runs.

    Left alone when the user asked those libraries for more (their verbosity set below WARNING, as
    `diffviz --verbose` does)."""
    import logging

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    if min(dlog.get_verbosity(), tlog.get_verbosity()) < logging.WARNING:
        yield
        return
    saved = (dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled(),
             tlog.is_progress_bar_enabled())
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", module=r"(diffusers|transformers|accelerate|huggingface_hub)")
            yield
    finally:
        dlog.set_verbosity(saved[0])
        tlog.set_verbosity(saved[1])
        (dlog.enable_progress_bar if saved[2] else dlog.disable_progress_bar)()
        (tlog.enable_progress_bar if saved[3] else tlog.disable_progress_bar)()
