"""Context managers that put diffviz into a pipeline and always take it out again.

Only ``attn2`` processors are replaced (through ``unet.set_attn_processor``); the step recorder
uses module hooks (text encoder, U-Net, VAE decoder) and wraps ``scheduler.step`` on the
instance. On exit, normal or by an exception, the saved processors are set back, every hook
handle is removed and the instance attribute is deleted: the pipeline is as it was, object for
object.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from ..pipelines import check_pipeline
from ..trace import Trace
from .processor import Attn2Processor, Edit, Sink
from .recorder import DEFAULT_MAX_BYTES, Recorder, attn2_layers


@contextmanager
def processors(pipe, names: Sequence[str], *, sink: Sink | None = None,
               edit: Edit | None = None) -> Iterator[list[str]]:
    """Install an ``Attn2Processor`` on the attention modules ``names`` (module paths); yields them.
    On exit every processor of the U-Net is set back to the one it had."""
    unet = check_pipeline(pipe)
    saved = dict(unet.attn_processors)
    names = list(names)
    replaced = {key: (Attn2Processor(key.removesuffix(".processor"), sink, edit)
                      if key.removesuffix(".processor") in names else proc) for key, proc in saved.items()}
    try:
        unet.set_attn_processor(replaced)
        yield names
    finally:
        unet.set_attn_processor(saved)


def attn2_processors(pipe, *, sink: Sink | None = None, edit: Edit | None = None,
                     layers: str | Sequence[str] | None = None):
    """Install an ``Attn2Processor`` on the selected attn2 layers (context manager; yields their names)."""
    return processors(pipe, list(attn2_layers(check_pipeline(pipe), layers)), sink=sink, edit=edit)


def prompt_attn1_layers(unet: torch.nn.Module) -> list[str]:
    """``attn1`` modules that read the prompt, in U-Nets built with ``only_cross_attention``
    (the classroom model); empty for Stable Diffusion, where attn1 is self-attention."""
    return [name for name, m in unet.named_modules()
            if name.endswith("attn1") and getattr(m, "is_cross_attention", False)]


@contextmanager
def _patched(obj, name: str, value) -> Iterator[None]:
    """Set an instance attribute for the duration; restore the old one, or remove ours."""
    had = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


@contextmanager
def trace(pipe, *, layers: str | Sequence[str] | None = None, heads: bool = False, uncond: bool = False,
          tokens: str = "prompt", max_bytes: int = DEFAULT_MAX_BYTES, edit: Edit | None = None) -> Iterator[Trace]:
    """Record the next generation of ``pipe`` into the yielded Trace.

    ``layers``: attn2 layers to capture, by name prefix ("up_blocks.1") or block ("down", "mid", "up");
    None = all. ``heads``: keep every head instead of their mean. ``uncond``: also keep the
    unconditional half. ``tokens``: "prompt" (word tokens), "special" (plus start and end) or "all"
    (the whole context). ``max_bytes``: refuse a capture estimated to need more. ``edit``: a function
    (layer, probs [batch, head, query, token]) -> probs applied in every captured layer (see diffviz.edit);
    the trace then records the edited attention.
    """
    check_pipeline(pipe)
    rec = Recorder(pipe, layers=layers, heads=heads, uncond=uncond, tokens=tokens, max_bytes=max_bytes)
    rec.original_step = pipe.scheduler.step
    with ExitStack() as stack:
        stack.enter_context(attn2_processors(pipe, sink=rec, edit=edit, layers=layers))
        hooks = [
            rec.text_encoder.register_forward_pre_hook(rec.on_text_encoder, with_kwargs=True),
            pipe.unet.register_forward_pre_hook(rec.on_unet_input, with_kwargs=True),
            pipe.unet.register_forward_hook(rec.on_unet_output, with_kwargs=True),
        ]
        if getattr(pipe, "vae", None) is not None:
            hooks.append(pipe.vae.decoder.register_forward_hook(rec.on_decoder_output))
        for h in hooks:
            stack.callback(h.remove)
        stack.enter_context(_patched(pipe.scheduler, "step", functools.partial(rec.step, rec.original_step)))
        try:
            yield rec.trace
        finally:
            rec.finish_early()
