"""The step recorder: what one generation passes through, gathered into one Trace per image.

It is fed by hooks that ``capture.install`` installs and removes: the text encoders' input ids (which
tokens, which words), the denoiser's input and output (noise predictions, both guidance halves),
``scheduler.step`` (latents before and after, predicted x0) and the VAE decoder's output (the final
images). The attention processors hand it their query and text keys; it turns them into attention
maps once per step, in one batched call per group of equal shapes, so each layer costs no extra
kernel while the denoiser runs. What it learns about the model it asks the family adapter.

Per-run state lives here and in the ``Capture`` the user holds: it says what state the run is in,
and gives the traces once the generation has run (never a half-filled Trace).
"""

from __future__ import annotations

import inspect
import json
import math
from collections import defaultdict
from collections.abc import Sequence

import torch

from .. import __version__
from ..decode import fit_preview, to_uint8
from ..regions import pool, region_mask
from ..select import Layers, select_layers
from ..traces import Layer, Trace, output_frames
from .families import CaptureError, Family, PromptTokens, family_of

DEFAULT_MAX_BYTES = 2 * 1024**3
TOKEN_MODES = ("prompt", "special", "all")
ATTN_DTYPE = torch.float16  # probabilities in [0, 1]: 3 significant digits are plenty, half the bytes
ONE_PER_BLOCK = ("this trace already holds a generation; open a new "
                 "`with diffviz.trace(pipe) as trace:` block for each pipeline call.")


def _estimate(family: Family, latent: tuple[int, int], steps: int, n_tokens: int, layers: Sequence[Layer],
              heads: bool, uncond: bool, images: int, queries: int = 0,
              self_layers: Sequence[Layer] = ()) -> dict[str, int]:
    """Bytes held: ``n_tokens`` stored tokens summed over the ``images``; ``queries`` self-attention maps
    per image in each of ``self_layers``."""
    cells = sum((l.heads if heads else 1) * math.prod(l.size) for l in layers)
    attention = steps * cells * n_tokens * (2 if uncond else 1) * ATTN_DTYPE.itemsize
    own = sum((l.heads if heads else 1) * math.prod(l.size) for l in self_layers)
    attention += steps * own * queries * images * ATTN_DTYPE.itemsize
    predictions = 2 if family.classifier_free else 1  # noise predictions a step (two under guidance)
    values = math.prod(latent) * family.latent_channels()
    sample, predicted = (d.itemsize for d in family.stored_dtypes())
    latents = images * values * ((2 * steps + 1) * sample + predictions * steps * predicted)  # latents, x0
    output = "video" if family.video else "image"  # decoded, kept whole: [(frame,) H, W, 3] uint8 per image
    out = {"attention": attention, "latents": latents, output: images * family.output_bytes(latent)}
    return out | {"total": sum(out.values())}


def estimate_bytes(pipe, height: int | None = None, width: int | None = None, num_inference_steps: int = 50,
                   n_tokens: int = 77, *, layers: Layers = None, heads: bool = False, uncond: bool = False,
                   images: int = 1, queries: int = 0, num_frames: int | None = None) -> dict[str, int]:
    """Bytes a capture will hold: {"attention": ..., "latents": ..., "image" (the decoded picture; "video",
    its frames, for a video pipeline), "total": ...}. ``n_tokens`` is the number of stored tokens per image
    (a prompt's word tokens unless tokens='all'); ``images`` per call; ``queries`` self-attention queries
    (``trace(pipe, queries=...)``); ``num_frames`` the output frames of a video (None: the pipeline's
    default)."""
    family = family_of(pipe)
    latent = family.latent_grid(height, width, num_frames)
    picked = family.layers(latent)
    names = set(select_layers(picked, layers, what="prompt-reading layer"))
    return _estimate(family, latent, num_inference_steps, n_tokens * images,
                     [l for l in picked if l.name in names], heads, uncond, images, queries,
                     family.self_layers(latent) if queries else ())


class _Image:
    """One image of the batch: where its rows are, which tokens it keeps, and what it recorded."""

    def __init__(self, prompt: PromptTokens, positions: list[int], cond: int, uncond: int | None):
        self.prompt, self.positions, self.cond, self.uncond = prompt, positions, cond, uncond
        self.latents: list[torch.Tensor] = []
        self.x0: list[torch.Tensor] = []
        self.noise_cond: list[torch.Tensor] = []
        self.noise_uncond: list[torch.Tensor] = []
        # per step and group of layers: (their names, maps [layer, row (uncond, cond), head, token, query])
        self.maps: list[tuple[tuple[str, ...], torch.Tensor]] = []
        self.self_maps: dict[str, list[torch.Tensor]] = defaultdict(list)  # [head, query, h, w] per step
        self.image: torch.Tensor | None = None
        self._index: dict[torch.device, torch.Tensor] = {}

    def index(self, device: torch.device) -> torch.Tensor:
        """The stored token positions as an index tensor on ``device`` (made once per device)."""
        if device not in self._index:
            self._index[device] = torch.tensor(self.positions, dtype=torch.long, device=device)
        return self._index[device]


class Capture:
    """What ``with diffviz.trace(pipe) as run:`` yields: the run's ``state``, then its traces.

    ``state``: "waiting" (no generation yet), "running", "done", or "stopped" (the generation ended
    before its last step; the steps that ran are kept, with ``options["complete"] = False``).
    ``run.traces``: one Trace per image of the call; ``run.trace``: the only one. A run of one image
    reads as its Trace: ``run.heatmap(...)``, ``run.save(...)``, ``run.words`` are the trace's.
    """

    def __init__(self, recorder: Recorder):
        self._recorder = recorder
        self._traces: list[Trace] | None = None

    @property
    def state(self) -> str:
        return self._recorder.state

    @property
    def traces(self) -> list[Trace]:
        if self._traces is None:
            if self.state not in ("done", "stopped"):
                raise CaptureError(f"this trace is empty (state {self.state!r}): no generation has run "
                                   "in its `with diffviz.trace(pipe)` block yet; call the pipeline "
                                   "inside the block.")
            self._traces = self._recorder.build()
        return self._traces

    @property
    def trace(self) -> Trace:
        traces = self.traces
        if len(traces) != 1:
            raise CaptureError(f"this call made {len(traces)} images, one trace each: use run.traces[i] "
                               "(or iterate over the run).")
        return traces[0]

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.trace, name)

    def __len__(self) -> int:
        return len(self.traces)

    def __iter__(self):
        return iter(self.traces)

    def __getitem__(self, i: int) -> Trace:
        return self.traces[i]

    def __repr__(self) -> str:
        if self.state in ("waiting", "running"):
            return f"Capture({self.state})"
        traces = self.traces
        return repr(traces[0]) if len(traces) == 1 else f"Capture({len(traces)} images: {traces!r})"


class Recorder:
    """Receives one generation from the hooks; ``capture`` is the user's handle on it."""

    def __init__(self, pipe, *, layers: Layers = None, heads: bool = False, uncond: bool = False,
                 tokens: str = "prompt", max_bytes: int = DEFAULT_MAX_BYTES,
                 queries: Sequence[Sequence[float]] | None = None, softmax_over: str = "text",
                 family: Family | None = None):
        if tokens not in TOKEN_MODES:
            raise ValueError(f"tokens must be one of {TOKEN_MODES}, not {tokens!r}.")
        if softmax_over not in ("text", "all"):
            raise ValueError(f'softmax_over must be "text" (maps renormalised over the prompt\'s tokens) or '
                             f'"all" (the share of the softmax over image and text keys), '
                             f'not {softmax_over!r}.')
        self.softmax_over = softmax_over
        self.queries = [[float(v) for v in q] for q in queries or []]
        if any(len(q) not in (2, 4) for q in self.queries):
            raise ValueError(f"queries are pixels (x, y) or boxes (x0, y0, x1, y1) in image pixels, "
                             f"got {queries!r}.")
        self.self_sizes: dict[str, tuple[int, int]] = {}  # self-attention layers captured -> query grid
        self.pipe, self.family = pipe, family or family_of(pipe)  # the run's one adapter
        self.heads, self.uncond, self.tokens_mode, self.max_bytes = heads, uncond, tokens, max_bytes
        self.options = {"layers": layers, "heads": heads, "uncond": uncond, "tokens": tokens,
                        "softmax_over": softmax_over}
        self.state = "waiting"  # -> "running" at the first denoiser call -> "done" after the last step
        # per encoder, per call
        self.ids: list[list[torch.Tensor]] = [[] for _ in self.family.text_encoders()]
        self.pending: dict[tuple, list] = defaultdict(list)  # this step's q/k (or probs) per shape group
        self.sizes: dict[str, tuple[int, int]] = {}  # captured layers -> query grid
        self.capture = Capture(self)
        # a family that calls the denoiser once per guidance branch: which branch runs, calls this step
        self.separate, self.branch, self.calls = self.family.guidance_calls == "separate", "cond", 0
        self.original_step = pipe.scheduler.step
        self._step_signature = inspect.signature(self.original_step)

    # ---- hooks --------------------------------------------------------------------------------
    def on_text_encoder(self, encoder: int, module, args, kwargs) -> None:
        if self.state == "done":
            raise CaptureError(ONE_PER_BLOCK)
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None and self.state == "waiting":
            self.ids[encoder].append(ids.detach().cpu())

    def on_denoiser_input(self, module, args, kwargs) -> None:
        if self.state == "done":
            raise CaptureError(ONE_PER_BLOCK)
        if self.state == "waiting":
            self._start(*self.family.denoiser_io(args, kwargs))
        self.pending.clear()
        if self.state == "running" and self.separate:  # this step's first call is the conditional one
            self.branch = "cond" if self.calls == 0 else "uncond"
            self.calls += 1

    def on_denoiser_output(self, module, args, kwargs, output) -> None:
        if self.state != "running":
            return
        noise = self.family.unpack(self.family.prediction(output))
        if self.separate:  # one branch per call
            for i, img in enumerate(self.images):
                (img.noise_cond if self.branch == "cond" else img.noise_uncond).append(noise[i].detach())
            return
        uncond, cond = noise.chunk(2) if self.cfg else (None, noise)
        for i, img in enumerate(self.images):
            img.noise_cond.append(cond[i].detach())
            if uncond is not None:
                img.noise_uncond.append(uncond[i].detach())

    def wants(self, layer: str) -> bool:
        """Whether ``layer``'s prompt attention is captured now (not in a separate unconditional call)."""
        return self.state == "running" and layer in self.sizes and self.branch == "cond"

    def wants_self(self, layer: str) -> bool:
        """Whether ``layer``'s image self-attention (rows of the chosen queries) is captured now."""
        return self.state == "running" and layer in self.self_sizes

    def keep(self, layer: str, attn, query: torch.Tensor, key: torch.Tensor,
             probs: torch.Tensor | None, text_mass: torch.Tensor | None = None) -> None:
        """Called by each processor with q [b, head, query, dim], k [b, head, token, dim] (or the
        edited probs), and for joint attention with softmax_over="all" the share of each query's attention
        that goes to the text [b, head, query]. Only references are kept: no torch call here, the maths
        waits for the step end."""
        if not self.wants(layer):
            return
        if probs is not None:
            self.pending[("probs", probs.shape)].append((layer, probs, text_mass))
        else:
            self.pending[(query.shape, key.shape, attn.scale)].append((layer, query, key, text_mass))
        if self.family.maps_per_layer:
            self._attention_of_step()

    def step(self, original, *args, **kwargs):
        """Wraps ``scheduler.step``: records the step, returns exactly what the scheduler returned."""
        out = original(*args, **kwargs)
        if self.state != "running":
            return out
        bound = self._step_signature.bind(*args, **kwargs).arguments
        sample, t, model_output = bound["sample"], bound["timestep"], bound["model_output"]
        prev = out[0] if isinstance(out, tuple) else out.prev_sample
        x0 = out[1] if isinstance(out, tuple) and len(out) > 1 else getattr(out, "pred_original_sample", None)
        if x0 is None:
            x0 = self.family.x0(model_output, t, sample)
        sample, prev, x0 = (self.family.unpack(x) for x in (sample, prev, x0))
        for i, img in enumerate(self.images):
            if not img.latents:
                img.latents.append(sample[i].detach())
            img.latents.append(prev[i].detach())
            img.x0.append(x0[i].detach())
        self.t.append(t)
        self.calls = 0
        self._attention_of_step()
        if len(self.t) == self.expected_steps:
            self.state = "done"
        return out

    def decode(self, original, *args, **kwargs):
        """Wraps a video VAE's ``decode``: keeps the decoded video [B, 3, frame, H, W], returns exactly what
        ``decode`` returned."""
        out = original(*args, **kwargs)
        if self.state == "done":
            frames = out[0] if isinstance(out, tuple) else out.sample
            for img, row in zip([img for img in self.images if img.image is None], frames):
                img.image = to_uint8(row.detach())
        return out

    def on_decoder_output(self, module, args, output) -> None:
        if self.state != "done" or tuple(output.shape[-2:]) != self.pixels:
            return
        waiting = [img for img in self.images if img.image is None]
        for img, row in zip(waiting, output):  # one batch, or one image per call (VAE slicing)
            img.image = to_uint8(row.detach())

    # ---- start, per step, finish --------------------------------------------------------------
    def _start(self, sample: torch.Tensor, t) -> None:
        family, sched = self.family, self.pipe.scheduler
        if not self.ids[0]:
            raise CaptureError("diffviz.trace needs the prompt as text to name its tokens; pass prompt=..., "
                               "not prompt_embeds.")
        self.cfg = family.guided()
        if self.separate and self.uncond:
            raise CaptureError(f"uncond=True is not available for {family.name}: its pipeline runs the "
                               "unconditional branch as a call of its own. Trace without uncond=.")
        batch = sample.shape[0] // (2 if self.cfg and not self.separate else 1)
        n_prompts = self.ids[0][0].shape[0]
        if batch % n_prompts:
            raise CaptureError(f"the denoiser sees {batch} images for {n_prompts} prompts; diffviz cannot "
                               "tell which image belongs to which prompt.")
        per_prompt = batch // n_prompts
        prompts = [family.read_prompt(self.ids, p) for p in range(n_prompts)]
        batched = self.cfg and not self.separate  # rows [uncond, cond] in one call
        self.images = [_Image(prompts[i // per_prompt], prompts[i // per_prompt].positions(self.tokens_mode),
                              batch + i if batched else i, i if batched else None) for i in range(batch)]
        self.latent = family.latent_size(sample)  # (h, w); (frame, h, w) for a video
        self.pixels = (self.latent[-2] * family.vae_scale, self.latent[-1] * family.vae_scale)
        layers = family.layers(self.latent)
        try:
            picked = set(select_layers(layers, self.options["layers"], what="prompt-reading layer"))
        except ValueError as err:
            raise CaptureError(str(err)) from None
        self.layers = [l for l in layers if l.name in picked]
        est = _estimate(family, self.latent, len(sched.timesteps), sum(len(i.positions) for i in self.images),
                        self.layers, self.heads, self.uncond, batch, len(self.queries),
                        family.self_layers(self.latent) if self.queries else ())
        if est["total"] > self.max_bytes:
            mib = {k: v / 2**20 for k, v in est.items()}
            raise CaptureError(
                f"this capture would hold about {mib['total']:.0f} MiB "
                f"(attention {mib['attention']:.0f} MiB, latents {mib['latents']:.0f} MiB), "
                f"over max_bytes={self.max_bytes / 2**20:.0f} MiB. Reduce it: heads=False (head mean), "
                f"layers={self.layers[-1].block or self.layers[-1].name!r} (fewer layers), uncond=False, "
                "tokens='prompt', fewer steps, fewer images or a smaller image; or raise max_bytes."
            )
        self.sizes = {l.name: l.size for l in self.layers}
        self.self_layers = family.self_layers(self.latent) if self.queries else []
        self.self_sizes = {l.name: l.size for l in self.self_layers}
        self._selections: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        for q in self.queries:  # inside the image?
            if len(q) == 2 and not (0 <= q[0] < self.pixels[1] and 0 <= q[1] < self.pixels[0]):
                raise CaptureError(f"query pixel {q} is outside the {self.pixels[1]}x{self.pixels[0]} image.")
            if len(q) == 4:
                try:
                    region_mask(tuple(q), *self.pixels)
                except ValueError as err:
                    raise CaptureError(str(err)) from None
        self.expected_steps = len(sched.timesteps) - first_step(sched, t)
        self.t: list = []
        # rows of the batch the maps need: the conditional ones, and the unconditional ones on request
        rows = sorted({r for img in self.images for r in (img.cond, img.uncond if self.uncond else None)
                       if r is not None})
        self.where = {r: i for i, r in enumerate(rows)}
        contiguous = rows == list(range(rows[0], rows[-1] + 1))
        self.rows = slice(rows[0], rows[-1] + 1) if contiguous else rows  # a slice is a view: no copy
        self.state = "running"

    def _attention_of_step(self) -> None:
        """Turn this step's queued q/k (or edited probs) into maps: one matmul + softmax per group of equal
        shapes, kept per image as one tensor per group [layer, row (uncond, cond), head, token, query]
        (split per layer at build)."""
        rows, where = self.rows, self.where
        for group, items in self.pending.items():
            if group[0] == "probs":
                probs = torch.stack([p[rows] for _, p, _ in items]).transpose(-1, -2)
            else:  # the needed rows before stacking: half the copying under guidance
                q = torch.stack([q[rows] for _, q, *_ in items])
                k = torch.stack([k[rows] for _, _, k, _ in items])
                probs = ((k @ q.transpose(-1, -2)).float() * group[2]).softmax(-2)  # over the tokens
            if items[0][-1] is not None:  # softmax_over="all": the raw share, text_mass * p_text
                probs = probs * torch.stack([m[rows] for *_, m in items]).unsqueeze(-2)
            names = tuple(name for name, *_ in items)
            for img in self.images:
                picked = [where[img.cond]] if not self.uncond or img.uncond is None else [where[img.uncond],
                                                                                          where[img.cond]]
                p = probs[:, picked] if len(self.images) > 1 else probs
                p = p.index_select(-2, img.index(p.device))
                if not self.heads:
                    p = p.mean(2, keepdim=True)
                img.maps.append((names, p.to(ATTN_DTYPE)))
        self.pending.clear()

    def _selection(self, size: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """For a query grid: the cells any query covers (index [cell]) and each query's weights over
        them (rows sum to 1) [query, cell]: a pixel is its cell, a box its pooled pixel coverage."""
        if (size, device) not in self._selections:
            h, w = size
            rows = []
            for q in self.queries:
                if len(q) == 2:
                    row = torch.zeros(h * w)
                    row[int(q[1] * h / self.pixels[0]) * w + int(q[0] * w / self.pixels[1])] = 1
                else:
                    row = pool(region_mask(tuple(q), *self.pixels), size).flatten()
                rows.append(row)
            weights = torch.stack(rows)
            cells = weights.sum(0).nonzero()[:, 0]
            weights = weights[:, cells]
            weights = weights / weights.sum(1, keepdim=True)
            self._selections[(size, device)] = (cells.to(device), weights.to(device))
        return self._selections[(size, device)]

    def keep_self(self, layer: str, attn, query: torch.Tensor, key: torch.Tensor) -> None:
        """Self-attention of the image: q [b, head, query, dim] and the image keys k [b, head, key, dim].
        Only the rows of the chosen queries are computed ([query cells, keys] per head, never the whole
        [keys, keys] matrix; softmax over the image keys), averaged over each query's cells."""
        if not self.wants_self(layer):
            return
        cells, weights = self._selection(self.self_sizes[layer], query.device)
        rows = [img.cond for img in self.images]
        q, k = query[rows][:, :, cells], key[rows]
        probs = ((q @ k.transpose(-1, -2)).float() * attn.scale).softmax(-1)  # [image, head, cell, key]
        maps = weights @ probs  # [image, head, query, key]
        if not self.heads:
            maps = maps.mean(1, keepdim=True)
        maps = maps.to(ATTN_DTYPE).unflatten(-1, self.self_sizes[layer])
        for img, m in zip(self.images, maps):
            img.self_maps[layer].append(m)

    def _maps(self, img: _Image) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One image's maps per layer on the CPU: cond and uncond [step, head, token, h, w]."""
        groups: dict[tuple[str, ...], list[torch.Tensor]] = defaultdict(list)
        for names, maps in img.maps:
            groups[names].append(maps)
        if sum(map(len, groups)) > len({n for names in groups for n in names}):
            raise CaptureError("a layer's attention changed shape between steps; diffviz keeps one shape per "
                               "layer.")
        attn, attn_uncond = {}, {}
        for names, steps in groups.items():
            group = torch.stack(steps).cpu()  # [step, layer, row, head, token, query]
            for i, name in enumerate(names):
                m = group[:, i].unflatten(-1, self.sizes[name])
                attn[name] = m[:, -1].contiguous()
                if m.shape[1] == 2:
                    attn_uncond[name] = m[:, 0].contiguous()
        return attn, attn_uncond

    def _matching(self, image: torch.Tensor) -> torch.Tensor:
        """The output frames of a video [frame, H, W, 3] that match its latent frames one to one (the last
        of the frames each latent frame covers); an image as it is."""
        if image.ndim == 3:
            return image
        tc = self.family.temporal_compression
        return image[[min(output_frames(k, tc)[-1], len(image) - 1) for k in range(self.latent[0])]]

    def finish(self) -> None:
        """At the end of the block: a generation that stopped before its last step keeps what ran."""
        if self.state == "running":
            self.state = "stopped" if self.t else "waiting"

    def build(self) -> list[Trace]:
        """One Trace per image (one move to the CPU per tensor); drops the device references."""
        cpu = lambda xs: torch.stack(xs).cpu()
        t = torch.stack([torch.as_tensor(x, dtype=torch.float32).reshape(()).cpu() for x in self.t])
        alpha_bar, sigma = self.family.schedule(t)
        sched = self.pipe.scheduler
        scheduler = {"name": type(sched).__name__, "config": _plain(dict(sched.config))}
        model = self.family.model_info()
        options = {**self.options, "diffviz_version": __version__}
        if self.state == "stopped":
            options["complete"] = False
        traces = []
        for i, img in enumerate(self.images):
            latents = cpu(img.latents)
            preview = None if img.image is None else fit_preview(latents[-1], self._matching(img.image.cpu()))
            attn, attn_uncond = self._maps(img)
            kept = [l for l in self.layers if l.name in attn]
            tokens = {tok.position: tok for tok in img.prompt.tokens}
            traces.append(Trace(
                prompt=img.prompt.prompt, negative_prompt=img.prompt.negative_prompt,
                words=list(img.prompt.words), tokens=[tokens[p] for p in img.positions], layers=kept,
                height=self.pixels[0], width=self.pixels[1],
                guidance_scale=self.family.guidance_scale() if self.cfg else 1.0, timesteps=t,
                alpha_bar=alpha_bar, sigma=sigma, latents=latents, x0=cpu(img.x0),
                noise_cond=cpu(img.noise_cond),
                noise_uncond=cpu(img.noise_uncond) if self.cfg else None,
                attn={l.name: attn[l.name] for l in kept},
                attn_uncond={l.name: attn_uncond[l.name] for l in kept if l.name in attn_uncond},
                image=None if img.image is None else img.image.cpu(), preview_weight=preview, model=model,
                queries=[list(q) for q in self.queries],
                self_layers=[l for l in self.self_layers if l.name in img.self_maps],
                self_attn={l.name: cpu(img.self_maps[l.name])
                           for l in self.self_layers if l.name in img.self_maps},
                scheduler=scheduler, options=options | ({"image": i, "images": len(self.images)}
                                                        if len(self.images) > 1 else {}),
            ))
        self.images = []  # drop the device references
        return traces


def first_step(scheduler, t) -> int:
    """Index into ``scheduler.timesteps`` of the first step a generation runs, whose denoiser input had
    timestep ``t``: the scheduler's begin index when the pipeline set one (image-to-image), else the
    nearest timestep (the denoiser may see it rounded, e.g. in bfloat16). One host sync per generation."""
    begin = getattr(scheduler, "begin_index", None)
    if begin is not None:
        return int(begin)
    timesteps = scheduler.timesteps.detach().cpu().double()
    return int((timesteps - float(torch.as_tensor(t).float())).abs().argmin())


def _plain(config: dict) -> dict:
    """A scheduler config as plain JSON values."""
    return json.loads(json.dumps(config, default=str))
