"""Attention edits that test an explanation: change where a word's attention goes, watch the image.

Prompt-to-prompt style interventions on the same processors the capture uses. Each function runs
the pipeline once, inside ``diffviz.trace(pipe, edit=...)``, and returns ``(image, trace)``: the PIL
image and the trace of the *edited* generation (its attention maps show the edit). The pipeline is
left as it was, also when the run raises.

Only the conditional half of classifier-free guidance is edited (the unconditional prompt has no
such word). Edits reach the layers the trace records: every attention layer that reads the prompt
(the model family says which: ``attn2`` and, in models built with ``only_cross_attention`` like the
classroom model, ``attn1`` too; otherwise a suppressed word would still leak in through them).
``layers`` picks among them with the layer selector of ``Trace.heatmap``: module path or a part of one
at a dot ("up_blocks.1", "attn1"), block ("down", "mid", "up") or resolution ("8x8"). A layer whose
processor is not plain attention (IP-Adapter, a custom one) is refused rather than silently replaced.
The edits run on the device without reading values back to the host during the generation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .capture.families import Family, family_of
from .capture.install import recording
from .capture.recorder import Recorder
from .regions import Region, pool, region_mask
from .select import Layers, Steps, find_word, select_layers, select_steps
from .traces import Layer, Trace

Words = str | int | Sequence[str | int]
# (probs [batch, head, query, token] of the conditional half, layer, step, positions) -> new probs
Change = Callable[[torch.Tensor, "_Call"], torch.Tensor]


@dataclass
class _Call:
    """What an edit knows when a layer calls it."""

    layer: str
    step: int
    size: tuple[int, int]  # (h, w) of the layer's query grid, latent cells
    positions: list[int]  # context positions of the edited word's tokens


@dataclass
class _Run:
    """State shared by the hooks of one edited generation."""

    family: Family  # the run's adapter (and its pipeline), shared with its recorder
    words: list[str | int]
    steps: Steps
    sizes: dict[str, tuple[int, int]]  # every prompt-reading layer -> its query grid (h, w)
    selected: set[str]  # the layers the edit changes
    recorder: Recorder | None = None
    step: int = -1  # the denoiser call in progress (one per denoising step)
    positions: list[int] | None = None
    selected_steps: set[int] | None = None


def _resolve(run: _Run) -> None:
    """At the first layer call: the word's token positions (the recorder has read the prompt by then)
    and the selected steps. Unknown words raise KeyError listing the prompt's words."""
    prompt = run.recorder.images[0].prompt
    picked = {i for w in run.words for i in find_word(prompt.words, prompt.prompt, w)}
    run.positions = [t.position for t in prompt.tokens if t.word in picked]
    run.selected_steps = set(select_steps(len(run.family.pipe.scheduler.timesteps), run.steps))


def _make_edit(run: _Run, change: Change) -> Callable[[str, torch.Tensor], torch.Tensor]:
    def edit(layer: str, probs: torch.Tensor) -> torch.Tensor:
        if run.positions is None:
            _resolve(run)
        if run.step not in run.selected_steps or layer not in run.selected:
            return probs
        half = probs.shape[0] // 2 if run.recorder.cfg else 0  # as the run's family read the batch
        out = probs.clone()
        out[half:] = change(probs[half:], _Call(layer, run.step, run.sizes[layer], run.positions))
        return out

    return edit


def _layers(family: Family, call_kwargs: dict) -> tuple[list[Layer], tuple[int, int]]:
    """The prompt-reading layers at the size of this call, and that size (H, W) in pixels."""
    h, w = call_kwargs.get("height"), call_kwargs.get("width")
    return family.layers(family.latent_grid(h, w)), family.image_size(h, w)


def _generate(family: Family, prompt: str, words: Words, change: Change, *, steps: Steps, layers: Layers,
              seed: int, check_first: Callable[[torch.Tensor], None] | None = None, **call_kwargs):
    """Run the family's pipeline on ``prompt`` once with ``change`` applied to ``words``' attention;
    -> (image, trace)."""
    pipe = family.pipe
    found, _ = _layers(family, call_kwargs)
    selected = select_layers(found, layers, what="prompt-reading layer")
    run = _Run(family, [words] if isinstance(words, (str, int)) else list(words), steps,
               {l.name: l.size for l in found}, set(selected))

    def count(module, args, kwargs) -> None:
        run.step += 1
        if run.step == 0 and check_first is not None:
            check_first(family.unpack(family.denoiser_io(args, kwargs)[0]))

    handle = family.denoiser.register_forward_pre_hook(count, with_kwargs=True)
    try:
        with recording(pipe, edit=_make_edit(run, change), edit_layers=selected, family=family) as rec:
            run.recorder = rec
            generator = torch.Generator().manual_seed(seed)
            image = pipe(prompt, generator=generator, **call_kwargs).images[0]
    finally:
        handle.remove()
    return image, rec.capture.trace


def _set_column(probs: torch.Tensor, positions: list[int], new: torch.Tensor) -> torch.Tensor:
    """Replace the word's columns of probs [batch, head, query, token] by ``new`` [..., query, len(positions)]
    and rescale the other tokens so every row still sums to 1 (the layer stays a weighted mean)."""
    out = probs.clone()
    old = probs[..., positions]
    new = new.clamp(0, 1)
    # never more than a whole row (no host sync to check)
    new = new / new.sum(-1, keepdim=True).clamp_min(1.0)
    rest = (1 - new.sum(-1, keepdim=True)) / (1 - old.sum(-1, keepdim=True)).clamp_min(1e-6)
    out = out * rest
    out[..., positions] = new
    return out


# ---- the edits ------------------------------------------------------------------------------------
def reweight(pipe, prompt: str, word: Words, factor: float, *, steps: Steps = None, layers: Layers = None,
             seed: int = 0, **call_kwargs):
    """Multiply ``word``'s cross-attention by ``factor`` (prompt-to-prompt re-weighting: the other
    tokens are not changed, so a row no longer sums to 1), at ``steps`` and ``layers`` (None: all).
    ``call_kwargs`` go to the pipeline (num_inference_steps, guidance_scale, ...). -> (image, trace)."""
    if factor < 0:
        raise ValueError(f"factor must be >= 0 (0 suppresses the word), not {factor}.")

    def change(p: torch.Tensor, c: _Call) -> torch.Tensor:
        p = p.clone()
        p[..., c.positions] *= factor
        return p

    return _generate(family_of(pipe), prompt, word, change, steps=steps, layers=layers, seed=seed,
                     **call_kwargs)


def suppress(pipe, prompt: str, word: Words, *, steps: Steps = None, layers: Layers = None, seed: int = 0,
             **call_kwargs):
    """Remove ``word`` from cross-attention (its attention set to 0) -> (image, trace)."""
    return reweight(pipe, prompt, word, 0.0, steps=steps, layers=layers, seed=seed, **call_kwargs)


def inject(pipe, prompt: str, source: Trace, word: str | int, *, source_word: str | int | None = None,
           steps: Steps = None, layers: Layers = None, seed: int = 0, **call_kwargs):
    """Generate ``prompt`` with ``word``'s attention maps taken from ``source`` (a trace of another
    prompt made with the same pipeline, seed, size and number of steps): the layout of
    ``source_word`` (default: the same word) is kept while the rest of the prompt changes.

    Maps are injected where the source recorded them (its layers; all heads if it kept them,
    else their mean for every head). Incompatible traces are refused with the reason. -> (image, trace).
    """
    src_idx = source.token_indices(source_word if source_word is not None else word)
    call_kwargs.setdefault("num_inference_steps", source.num_steps)
    if call_kwargs["num_inference_steps"] != source.num_steps or not source.options.get("complete", True):
        raise ValueError(f"the source trace has {source.num_steps} steps, this generation "
                         f"{call_kwargs['num_inference_steps']}; inject needs the same number of steps.")
    family = family_of(pipe)
    found, (h, w) = _layers(family, call_kwargs)
    if (h, w) != (source.height, source.width):
        raise ValueError(f"the source trace is {source.width}x{source.height} px, this generation {w}x{h}; "
                         "pass height=/width= to match.")
    if source.model.get("pipeline") != type(pipe).__name__:
        raise ValueError(f"the source trace was made by a {source.model.get('pipeline')}, not this "
                         f"{type(pipe).__name__}.")
    names = {l.name for l in found}
    missing = [l.name for l in source.layers if l.name not in names]
    if missing:
        raise ValueError(f"the source trace has layers this pipeline lacks ({missing[:2]}...): "
                         "another model.")
    device = family.denoiser.device  # moved once, not once per layer and step
    src_maps = {name: m[:, :, src_idx].to(device, torch.float32) for name, m in source.attn.items()}
    # [step, head, token, h, w]

    def change(p: torch.Tensor, c: _Call) -> torch.Tensor:
        if c.layer not in src_maps:
            return p
        m = src_maps[c.layer][c.step]  # [head, token, h, w]
        if len(src_idx) != len(c.positions):  # different token counts: one map for the whole word
            m = m.sum(1, keepdim=True).expand(-1, len(c.positions), -1, -1) / len(c.positions)
        new = m.flatten(-2).transpose(-1, -2)  # [head, query, token]
        return _set_column(p, c.positions, new.expand(p.shape[0], p.shape[1], -1, -1))

    def same_noise(sample: torch.Tensor) -> None:
        first = sample[-1].float().flatten().cpu()
        ref = source.latents[0].float().flatten()
        if torch.nn.functional.cosine_similarity(first, ref, dim=0) < 0.99:
            raise ValueError("the source trace started from different noise: inject needs the seed the "
                             "source was made with (pass seed=...).")

    return _generate(family, prompt, word, change, steps=steps, layers=layers, seed=seed,
                     check_first=same_noise, **call_kwargs)


def steer(pipe, prompt: str, word: Words, box: Region, *, strength: float = 0.9, steps: Steps = None,
          layers: Layers = None, seed: int = 0, **call_kwargs):
    """Steer ``word``'s attention into ``box`` (x0, y0, x1, y1 in image pixels, or a [H, W] mask):
    layout control by guiding attention during sampling.

    At each selected step and layer, the word's attention mass over the image is moved into the box
    (a ``strength`` share of it, 0..1; 1 = all of it), spread evenly over the box; the other tokens
    are rescaled so each pixel's attention still sums to 1. Layout forms in the first steps, so steering
    them (``steps=slice(0, 6)`` of 20) is the usual choice; how often an object lands depends on the model
    (``benchmarks/faithfulness.py`` measures it on the classroom model). -> (image, trace).
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"strength is the share of attention moved into the box, 0..1, not {strength}.")
    family = family_of(pipe)
    mask = region_mask(box, *_layers(family, call_kwargs)[1])
    pooled: dict[tuple[int, int], torch.Tensor] = {}

    def change(p: torch.Tensor, c: _Call) -> torch.Tensor:
        if c.size not in pooled:
            b = pool(mask, c.size).flatten()
            pooled[c.size] = (b / b.sum()).to(p.device)
        b = pooled[c.size][:, None]  # [query, 1]
        old = p[..., c.positions]  # [batch, head, query, token]
        target = old.sum(-2, keepdim=True) * b  # the same mass per token, spread over the box
        return _set_column(p, c.positions, (1 - strength) * old + strength * target)

    return _generate(family, prompt, word, change, steps=steps, layers=layers, seed=seed, **call_kwargs)


__all__ = ["inject", "reweight", "steer", "suppress"]
