"""Context managers that put diffviz into a pipeline and always take it out again.

Only the processors of the prompt-reading attention layers are replaced (each layer's ``set_processor``;
the family adapter says which layers and which processor); the step recorder
uses module hooks (text encoders, denoiser, VAE decoder) and wraps ``scheduler.step`` (and a video
VAE's ``decode``) on the instance. On exit, normal or by an exception, the saved processors are set back,
every hook handle is removed and the instance attributes are deleted: the pipeline is as it was, object for
object.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from ..select import Layers, select_layers
from .families import CaptureError, Family, family_of
from .processor import Edit, SelfAttention, Sink, is_ours
from .recorder import DEFAULT_MAX_BYTES, Capture, Recorder


def _default_layers(family: Family):
    return family.layers(family.latent_grid())


@contextmanager
def processors(pipe, *, sink: Sink | None = None, edit: Edit | None = None, layers: Layers = None,
               edit_layers: Sequence[str] | None = None, self_layers: Sequence[str] = (),
               family: Family | None = None) -> Iterator[list[str]]:
    """Install diffviz's processor on the prompt-reading layers picked by ``layers`` (the layer selector;
    resolutions at the model's default image size); yields their names. ``edit(layer, probs)`` changes
    the attention on ``edit_layers`` (default: all of them). ``self_layers``: self-attention modules
    that hand the sink their query and image keys too (``sink.keep_self``). On exit every processor is
    set back.

    A processor diffviz did not write is kept working (wrapped) where nothing is edited; an edit
    refuses (CaptureError) a layer whose processor it would replace with different maths. ``family``: the
    pipeline's adapter, when the caller has it."""
    family = family or family_of(pipe)
    names = select_layers(_default_layers(family), layers, what="prompt-reading layer")
    denoiser = family.denoiser
    saved = dict(denoiser.attn_processors)
    if any(is_ours(p) for p in saved.values()):
        raise CaptureError("this pipeline is already being traced (a `with diffviz.trace(pipe)` block or an "
                           "edit is running on it): diffviz traces one generation at a time. Use the trace "
                           "you have, or trace after that block ends.")
    editing = set(names if edit_layers is None else edit_layers)
    replaced = {}  # module path -> diffviz's processor; every other layer is left untouched
    for key, proc in saved.items():
        name = key.removesuffix(".processor")
        if name in names:
            replaced[name] = family.processor(name, proc, sink, edit if name in editing else None)
        elif name in self_layers:  # only the image's self-attention (a joint layer tells the two apart)
            own = sink if family.joint or sink is None else SelfAttention(sink)
            replaced[name] = family.processor(name, proc, own, None)
    try:  # set on the modules themselves: set_attn_processor walks the whole model twice per call
        for name, proc in replaced.items():
            denoiser.get_submodule(name).set_processor(proc)
        yield names
    finally:
        for name in replaced:
            denoiser.get_submodule(name).set_processor(saved[f"{name}.processor"])


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


def _check_selector(family: Family, layers: Layers) -> None:
    """Refuse, before the run, a selector naming no layer (resolutions wait for the image size)."""
    for w in [] if layers is None else [layers] if isinstance(layers, str) else list(layers):
        if not re.fullmatch(r"\d+x\d+", w):
            try:
                select_layers(_default_layers(family), w, what="prompt-reading layer")
            except ValueError as err:
                raise CaptureError(str(err)) from None


@contextmanager
def recording(pipe, *, layers: Layers = None, heads: bool = False, uncond: bool = False,
              tokens: str = "prompt", max_bytes: int = DEFAULT_MAX_BYTES, edit: Edit | None = None,
              edit_layers: Sequence[str] | None = None,
              queries: Sequence[Sequence[float]] | None = None, softmax_over: str = "text",
              family: Family | None = None) -> Iterator[Recorder]:
    """``trace`` for diffviz's own callers (the edits): yields the Recorder itself. ``family``: the run's
    adapter when the caller made it already (one per run; it holds the run's facts)."""
    rec = Recorder(pipe, layers=layers, heads=heads, uncond=uncond, tokens=tokens, max_bytes=max_bytes,
                   queries=queries, softmax_over=softmax_over, family=family)
    family = rec.family
    _check_selector(family, layers)
    own = [l.name for l in family.self_layers(family.latent_grid())] if queries else []
    if queries and not own:
        raise CaptureError(f"this {type(pipe).__name__} has no self-attention (image to image) layers, so "
                           "there is nothing for queries= to show (the classroom model's attn1 reads the "
                           "prompt).")
    with ExitStack() as stack:
        stack.enter_context(processors(pipe, sink=rec, edit=edit, edit_layers=edit_layers, self_layers=own,
                                       family=family))
        hooks = [enc.register_forward_pre_hook(functools.partial(rec.on_text_encoder, i), with_kwargs=True)
                 for i, enc in enumerate(family.text_encoders())]
        hooks += [family.denoiser.register_forward_pre_hook(rec.on_denoiser_input, with_kwargs=True),
                  family.denoiser.register_forward_hook(rec.on_denoiser_output, with_kwargs=True)]
        vae = getattr(pipe, "vae", None)
        if vae is not None and not family.video:
            hooks.append(vae.decoder.register_forward_hook(rec.on_decoder_output))
        for h in hooks:
            stack.callback(h.remove)
        if vae is not None and family.video:  # a video VAE runs its decoder per chunk of frames
            stack.enter_context(_patched(vae, "decode", functools.partial(rec.decode, vae.decode)))
        stack.enter_context(_patched(pipe.scheduler, "step", functools.partial(rec.step, rec.original_step)))
        try:
            yield rec
        finally:
            rec.finish()


@contextmanager
def trace(pipe, *, layers: Layers = None, heads: bool = False, uncond: bool = False, tokens: str = "prompt",
          max_bytes: int = DEFAULT_MAX_BYTES, edit: Edit | None = None,
          queries: Sequence[Sequence[float]] | None = None, softmax_over: str = "text") -> Iterator[Capture]:
    """Record the next generation of ``pipe``; yields its ``Capture`` (one Trace per image, see there).

    ``layers``: prompt-reading layers to capture, by the layer selector: module path or a part of one at
    a dot ("up_blocks.1", "attn1"), block ("down", "mid", "up") or resolution ("16x16"); None = all.
    ``heads``: keep every head instead of their mean. ``uncond``: also keep the unconditional half.
    ``tokens``: "prompt" (word tokens), "special" (plus start and end) or "all" (the whole context).
    ``max_bytes``: refuse a capture estimated to need more. ``edit``: a function
    (layer, probs [batch, head, query, token]) -> probs applied in every captured layer (see diffviz.edit);
    the trace then records the edited attention. ``queries``: pixels (x, y) or boxes (x0, y0, x1, y1) in
    image pixels whose self-attention (where they look in the image) to keep, in every self-attention
    layer and step; only those rows are computed, never the whole image-by-image matrix.
    ``softmax_over``: on joint attention (SD3, Flux: one softmax over image and text keys), "text" (the
    default) stores each pixel's attention renormalised over the prompt's tokens, so it sums to 1 as a
    cross-attention map of SD or PixArt does and maps compare across families; "all" stores each token's
    raw share of the whole softmax (a pixel that mostly attends to the image gives every word little).
    Cross-attention families give the same maps either way.
    """
    with recording(pipe, layers=layers, heads=heads, uncond=uncond, tokens=tokens, max_bytes=max_bytes,
                   edit=edit, queries=queries, softmax_over=softmax_over) as rec:
        yield rec.capture
