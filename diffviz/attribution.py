"""Which words made these pixels? Gradient attribution (captum) of one denoising step to the prompt.

Attention says where a word's information flowed; attribution asks how much the prediction depends
on the word. At one step of a traced generation we rebuild the U-Net call exactly as the pipeline
made it (same latents, timestep, both guidance halves) and attribute a scalar of the prediction to
the prompt's tokens with captum:

* ``"integrated_gradients"``: ``LayerIntegratedGradients`` on the text encoder's token embeddings,
  from a baseline prompt whose word tokens are replaced by padding. Completeness: the token scores sum
  to ``F(prompt) - F(baseline)`` up to the reported ``delta``.
* ``"saliency"`` (|gradient|) and ``"input_x_gradient"`` on the prompt embeddings (the text
  encoder's output that the U-Net reads).

The scalar ``F`` is the region's prediction (x0 or noise, guided) projected on its own change from
the baseline prompt: ``F(e) = mean_region <pred(e), pred(prompt) - pred(baseline)>``. So
``F(prompt) - F(baseline)`` is the mean squared change the prompt causes in the region, and the token
scores split that change among the words (units: latent value squared). Gradients run in float32,
also for float16 pipelines (cast for the call, cast back exactly afterwards).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from captum.attr import InputXGradient, LayerIntegratedGradients, Saliency

from . import heatmap
from .capture.families import family_of
from .regions import Region, pool, region_attention, region_mask  # re-exported: attribution's vocabulary
from .traces import Token, Trace

METHODS = ("integrated_gradients", "saliency", "input_x_gradient")
TARGETS = ("x0", "noise")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (ties get their mean rank); nan if either is constant."""
    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        r = torch.empty_like(x)
        order = x.argsort()
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in x.unique():  # average the ranks of ties
            tie = x == v
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a.flatten()), ranks(b.flatten())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else float("nan")


# ---- the result ----------------------------------------------------------------------------------
@dataclass
class Attribution:
    """Attribution of one step's prediction in one region to the prompt's tokens and words."""

    method: str
    target: str  # "x0" or "noise"
    step: int
    timestep: float
    words: list[str]
    tokens: list[Token]  # the trace's stored tokens, aligned with token_scores
    token_scores: torch.Tensor  # [token] float32 (units: squared latent change; saliency: |grad| sum)
    word_scores: torch.Tensor  # [word] float32, summed over each word's tokens
    total: float  # F(prompt) - F(baseline): what integrated gradients must add up to
    delta: float | None  # captum's convergence delta (integrated gradients only)
    region: torch.Tensor  # [H, W] float32 pixel weights of the attributed region
    word: str | None = None  # the word of ``pixel_map``
    # [H, W] float32, signed: padding occlusion of ``word`` (the prediction minus the prediction with only
    # that word replaced by padding, along the attribution direction), per pixel; whatever ``method`` is
    pixel_map: torch.Tensor | None = None
    # (same units as the scores; its region-weighted mean is the word's own effect on F)

    def ranking(self) -> list[str]:
        """Words from the most to the least attributed (by signed score)."""
        return [self.words[i] for i in self.word_scores.argsort(descending=True).tolist()]

    def __repr__(self) -> str:
        top = ", ".join(f"{self.words[i]}={self.word_scores[i]:.3g}"
                        for i in self.word_scores.argsort(descending=True)[:4].tolist())
        d = "" if self.delta is None else f", delta {self.delta:.2g}"
        return (f"Attribution({self.method}, {self.target} at step {self.step}: {top}; "
                f"total {self.total:.3g}{d})")


# ---- rebuilding one U-Net call ---------------------------------------------------------------------
@contextmanager
def _float32(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Cast ``modules`` to float32 for the block and back afterwards (fp16 -> fp32 -> fp16 is exact)."""
    from diffusers.utils import logging as dlogging

    cast = [(m, next(m.parameters()).dtype) for m in modules if next(m.parameters()).dtype != torch.float32]
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # diffusers warns on every ModelMixin.to(dtype); this cast is deliberate
    try:
        for m, _ in cast:
            m.float()
        yield
    finally:
        for m, d in cast:
            m.to(d)
        dlogging.set_verbosity(verbosity)


# ---- attribution ---------------------------------------------------------------------------------
def attribute(pipe, trace: Trace, step: int, region: Region = None, *, method: str = "integrated_gradients",
              target: str = "x0", word: str | int | None = None, n_steps: int = 32,
              internal_batch_size: int | None = 8) -> Attribution:
    """Attribute ``target`` ("x0" or "noise", guided) at ``step`` of ``trace``, inside ``region``, to the
    prompt's tokens and words. ``pipe`` must be the pipeline that made the trace (it is left as it was).

    ``region``: a box (x0, y0, x1, y1) in image pixels, a [H, W] mask, or None for the whole image.
    ``method``: "integrated_gradients" (layer IG on token embeddings, ``n_steps`` points),
    "saliency" or "input_x_gradient" (on the prompt embeddings). ``word``: also compute that word's
    per-pixel contribution map (the exact integral of the gradient along the path that moves only this
    word from its baseline, i.e. the change when the word alone is replaced by padding).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}.")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}.")
    family = family_of(pipe)
    if trace.num_steps == 0:
        raise ValueError("this trace is empty: run the pipeline inside "
                         "`with diffviz.trace(pipe) as trace:` first.")
    step = trace.step_indices(step)[0]
    word_idx = trace.word_indices(word)[0] if word is not None else None
    mask = region_mask(region, trace.height, trace.width)
    model = family.step_model(trace, step, target)
    weights = pool(mask, tuple(model.latent.shape[-2:])).to(model.device)
    weights = weights / weights.sum()

    with _float32([model.denoiser, *model.encoders]):
        model.prepare()
        with torch.no_grad():
            e_in, p_in = model.encode(*model.ids)
            base_ids = model.baseline_ids()
            e_base, p_base = model.encode(*base_ids)
            pred_in, pred_base = model.prediction(e_in, p_in), model.prediction(e_base, p_base)
        direction = pred_in - pred_base  # [1, C, h, w]
        traced = (trace.x0 if target == "x0" else trace.noise_guided)[step].to(pred_in.device, torch.float32)
        if (pred_in[0] - traced).norm() > 0.05 * traced.norm():  # fp16 traces differ by ~1e-3
            raise ValueError("this pipeline does not reproduce the trace's prediction at step "
                             f"{step}: pass the pipeline (weights, scheduler) that made the trace.")

        def score(pred: torch.Tensor) -> torch.Tensor:  # [n, C, h, w] -> [n]
            return ((pred * direction).sum(1) * weights).sum((-2, -1))

        total = float(score(pred_in) - score(pred_base))
        delta = None
        if method == "integrated_gradients":
            def forward_ids(*ids: torch.Tensor) -> torch.Tensor:
                return score(model.prediction(*model.encode(*ids)))

            layers = [e.get_input_embeddings() for e in model.encoders]  # token embeddings
            with warnings.catch_warnings():  # SDXL: two encoders' embeddings, independent as captum asks
                warnings.filterwarnings("ignore", message="Multiple layers provided")
                ig = LayerIntegratedGradients(forward_ids, layers if len(layers) > 1 else layers[0])
            attr, d = ig.attribute(tuple(model.ids), baselines=tuple(base_ids), n_steps=n_steps,
                                   internal_batch_size=internal_batch_size, return_convergence_delta=True)
            parts = attr if isinstance(attr, list) else [attr]
            # encoder e's ids sit at text keys offsets[e] + i: SDXL's two CLIPs share them, SD3's T5 follows
            offsets = getattr(model, "offsets", [0] * len(parts))
            per_position = torch.zeros(max(o + a.shape[1] for o, a in zip(offsets, parts, strict=True)),
                                       device=parts[0].device)
            for o, a in zip(offsets, parts, strict=True):
                per_position[o:o + a.shape[1]] += a[0].float().sum(-1)
            delta = float(d.reshape(-1)[0])
        else:
            def forward_embeds(embeds: torch.Tensor) -> torch.Tensor:
                return score(model.prediction(embeds, None if p_in is None else p_in.expand(len(embeds), -1)))

            algo = Saliency(forward_embeds) if method == "saliency" else InputXGradient(forward_embeds)
            attr = algo.attribute(e_in.detach().clone().requires_grad_(True))
            per_position = attr[0].float().sum(-1)

        pixel_map = None
        if word_idx is not None:
            positions = [t.position for t in trace.tokens if t.word == word_idx]
            with torch.no_grad():
                e_w, p_w = model.encode(*model.baseline_ids(positions))
                cell = ((pred_in - model.prediction(e_w, p_w)) * direction).sum(1)[0]  # [h, w]
            # its mean over the region (weighted like F) is the word's own effect on F
            pixel_map = heatmap.upsample(cell.cpu(), (trace.height, trace.width))

    token_scores = per_position.detach().cpu()[[t.position for t in trace.tokens]]
    word_scores = torch.zeros(len(trace.words))
    for s, t in zip(token_scores, trace.tokens):
        if t.word is not None:
            word_scores[t.word] += s
    return Attribution(
        method=method, target=target, step=step, timestep=float(trace.timesteps[step]),
        words=list(trace.words), tokens=list(trace.tokens), token_scores=token_scores,
        word_scores=word_scores, total=total, delta=delta, region=mask,
        word=None if word_idx is None else trace.words[word_idx], pixel_map=pixel_map,
    )


# ---- attention vs attribution --------------------------------------------------------------------
@dataclass
class Agreement:
    """Attention and attribution rankings of the words for one region."""

    words: list[str]
    attention: torch.Tensor  # [word] mean attention probability inside the region
    attribution: torch.Tensor  # [word] the Attribution's word scores
    spearman: float  # rank correlation of the two, in [-1, 1]

    def ranks(self) -> tuple[list[str], list[str]]:
        """(words by attention, words by attribution), highest first."""
        by = lambda s: [self.words[i] for i in s.argsort(descending=True).tolist()]
        return by(self.attention), by(self.attribution)


def agreement(trace: Trace, attribution: Attribution, *, steps=None, layers=None,
              words: Sequence[str | int] | None = None) -> Agreement:
    """Compare the attention ranking with ``attribution``'s ranking of the words in its region.

    ``steps``: attention steps to average (default: the attribution's step). ``words``: a subset of the
    prompt's words to rank (default all).
    """
    att = region_attention(trace, attribution.region, steps=attribution.step if steps is None else steps,
                           layers=layers)
    idx = list(range(len(trace.words))) if words is None else [trace.word_indices(w)[0] for w in words]
    a, b = att[idx], attribution.word_scores[idx]
    return Agreement([trace.words[i] for i in idx], a, b, spearman(a, b))


__all__: list[str] = [
    "METHODS",
    "TARGETS",
    "Agreement",
    "Attribution",
    "agreement",
    "attribute",
    "pool",
    "region_attention",
    "region_mask",
    "spearman",
]
