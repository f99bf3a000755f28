"""The step recorder: what one generation passes through, gathered into a Trace.

It is fed by four hooks (installed and removed by ``capture.install``): the text encoder's input
ids (which tokens, which words), the U-Net's input and output (noise predictions, both guidance
halves), ``scheduler.step`` (latents before and after, predicted x0) and the VAE decoder's output
(the final image). The attn2 processors hand it their query and key; it turns them into attention
maps once per step, in one batched call per group of equal shapes, so each layer costs no extra
kernel while the U-Net runs.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections import defaultdict
from collections.abc import Sequence

import torch

from .. import __version__
from ..decode import fit_preview, to_uint8
from ..trace import Layer, Token, Trace

DEFAULT_MAX_BYTES = 2 * 1024**3
TOKEN_MODES = ("prompt", "special", "all")
ATTN_DTYPE = torch.float16  # probabilities in [0, 1]: 3 significant digits are plenty, half the bytes


class CaptureError(RuntimeError):
    """A generation that diffviz cannot trace as asked; the message says what to change."""


def attn2_layers(unet: torch.nn.Module, layers: str | Sequence[str] | None = None) -> dict[str, int]:
    """Cross-attention module paths of ``unet`` -> their resolution level (0 = latent size, each
    level halves it). ``layers`` filters by name prefix or block ("down", "mid", "up")."""
    n_down = len(unet.down_blocks)
    found: dict[str, int] = {}
    for key in unet.attn_processors:
        name = key.removesuffix(".processor")
        if not name.endswith("attn2"):
            continue
        block, _, rest = name.partition(".")
        if block == "down_blocks":
            level = int(rest.split(".")[0])
        elif block == "up_blocks":
            level = len(unet.up_blocks) - 1 - int(rest.split(".")[0])
        else:
            level = n_down - 1
        found[name] = level
    if not found:
        raise CaptureError("this U-Net has no cross-attention (attn2) layers, so no word can be traced.")
    if layers is None:
        return found
    wanted = [layers] if isinstance(layers, str) else list(layers)
    picked = {n: lv for n, lv in found.items() if any(n.startswith(w) for w in wanted)}
    if not picked:
        raise CaptureError(f"layers={layers!r} matches no attn2 layer; names start with "
                           f"{sorted({n.split('.attentions')[0] for n in found})}.")
    return picked


def level_size(latent: tuple[int, int], level: int) -> tuple[int, int]:
    """(h, w) of a feature map ``level`` stride-2 downsamplings below ``latent``."""
    return math.ceil(latent[0] / 2**level), math.ceil(latent[1] / 2**level)


def estimate_bytes(pipe, height: int | None = None, width: int | None = None, num_inference_steps: int = 50,
                   n_tokens: int = 77, *, layers: str | Sequence[str] | None = None, heads: bool = False,
                   uncond: bool = False) -> dict[str, int]:
    """Bytes a capture will hold: {"attention": ..., "latents": ..., "total": ...}.
    ``n_tokens`` is the number of stored tokens (a prompt's word tokens unless tokens='all')."""
    unet, vae_scale = pipe.unet, getattr(pipe, "vae_scale_factor", 8)
    sample = unet.config.sample_size
    height = height or sample * vae_scale
    width = width or sample * vae_scale
    latent = (height // vae_scale, width // vae_scale)
    modules = dict(unet.named_modules())
    cells = sum(
        (modules[n].heads if heads else 1) * math.prod(level_size(latent, lv))
        for n, lv in attn2_layers(unet, layers).items()
    )
    attention = num_inference_steps * cells * n_tokens * (2 if uncond else 1) * ATTN_DTYPE.itemsize
    c = unet.config.in_channels if unet.config.in_channels <= 4 else unet.config.out_channels
    latents = (4 * num_inference_steps + 1) * c * math.prod(latent) * unet.dtype.itemsize
    return {"attention": attention, "latents": latents, "total": attention + latents}


class Recorder:
    """Receives one generation from the hooks and writes it into ``self.trace``."""

    def __init__(self, pipe, *, layers: str | Sequence[str] | None = None, heads: bool = False,
                 uncond: bool = False, tokens: str = "prompt", max_bytes: int = DEFAULT_MAX_BYTES):
        if tokens not in TOKEN_MODES:
            raise ValueError(f"tokens must be one of {TOKEN_MODES}, not {tokens!r}.")
        self.pipe = pipe
        self.levels = attn2_layers(pipe.unet, layers)
        self.heads, self.uncond, self.tokens_mode, self.max_bytes = heads, uncond, tokens, max_bytes
        self.options = {"layers": layers, "heads": heads, "uncond": uncond, "tokens": tokens}
        encoder = pipe.text_encoder if getattr(pipe, "text_encoder", None) is not None else pipe.text_encoder_2
        self.text_encoder = encoder
        self.tokenizer = pipe.tokenizer if encoder is getattr(pipe, "text_encoder", None) else pipe.tokenizer_2
        self.state = "idle"  # -> "running" at the first U-Net call -> "done" after the last step
        self.ids: list[torch.Tensor] = []  # text-encoder inputs, prompt first
        self.trace = _empty_trace(self.options)
        self.pending: dict[tuple, list] = defaultdict(list)  # this step's q/k (or probs) per shape group
        self._modules = {n: m for n, m in pipe.unet.named_modules() if n in self.levels}

    # ---- hooks --------------------------------------------------------------------------------
    def on_text_encoder(self, module, args, kwargs) -> None:
        if self.state == "done":
            raise CaptureError("this trace already holds a generation; open a new "
                               "`with diffviz.trace(pipe) as trace:` block for each pipeline call.")
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None and self.state == "idle":
            self.ids.append(ids.detach().cpu())

    def on_unet_input(self, module, args, kwargs) -> None:
        if self.state == "done":
            raise CaptureError("this trace already holds a generation; open a new "
                               "`with diffviz.trace(pipe) as trace:` block for each pipeline call.")
        if self.state == "idle":
            self._t_of_first_call = args[1] if len(args) > 1 else kwargs["timestep"]
            self._start(args[0] if args else kwargs["sample"])
        self.pending.clear()

    def on_unet_output(self, module, args, kwargs, output) -> None:
        if self.state != "running":
            return
        noise = output[0] if isinstance(output, tuple) else output.sample
        if self.cfg:
            uncond, cond = noise.chunk(2)
            self.noise_uncond.append(uncond[0].detach())
        else:
            cond = noise
        self.noise_cond.append(cond[0].detach())

    def keep(self, layer: str, attn, query: torch.Tensor, key: torch.Tensor,
             probs: torch.Tensor | None) -> None:
        """Called by each attn2 processor with q [b, head, query, dim], k [b, head, token, dim] (or
        the edited probs). Only references are kept: no torch call here, the maths waits for the step end."""
        if self.state != "running":
            return
        if probs is not None:
            self.pending[("probs", probs.shape)].append((layer, probs, None))
        else:
            self.pending[(query.shape, key.shape, attn.scale)].append((layer, query, key))

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
            x0 = self._x0_from(model_output, t, sample)
        if not self.latents:
            self.latents.append(sample[0].detach())
        self.latents.append(prev[0].detach())
        self.x0.append(x0[0].detach())
        self.t.append(t)
        self._attention_of_step()
        if len(self.t) == self.expected_steps:
            self._finish()
        return out

    def on_decoder_output(self, module, args, output) -> None:
        if self.state != "done" or output.shape[0] != 1 or tuple(output.shape[-2:]) != self.pixels:
            return
        image = to_uint8(output[0].detach())
        self.trace.image = image
        self.trace.preview_weight = fit_preview(self.trace.latents[-1], image)

    # ---- start, per step, finish --------------------------------------------------------------
    def _start(self, sample: torch.Tensor) -> None:
        pipe, sched = self.pipe, self.pipe.scheduler
        if not self.ids:
            raise CaptureError("diffviz.trace needs the prompt as text to name its tokens; pass prompt=..., "
                               "not prompt_embeds.")
        if self.ids[0].shape[0] != 1:
            raise CaptureError(f"diffviz.trace records one image per generation, got {self.ids[0].shape[0]} "
                               "prompts; call the pipeline once per prompt, each in its own trace.")
        self.cfg = bool(getattr(pipe, "do_classifier_free_guidance", False))
        if sample.shape[0] != (2 if self.cfg else 1):
            n = sample.shape[0] // (2 if self.cfg else 1)
            raise CaptureError(f"diffviz.trace records one image per generation, got {n} "
                               "(num_images_per_prompt > 1?); loop over seeds instead, one trace each.")
        self.latent = tuple(sample.shape[-2:])
        self.pixels = tuple(s * getattr(pipe, "vae_scale_factor", 8) for s in self.latent)
        self._name_tokens()
        est = estimate_bytes(pipe, *self.pixels, len(sched.timesteps), len(self.positions),
                             layers=self.options["layers"], heads=self.heads, uncond=self.uncond)
        if est["total"] > self.max_bytes:
            mib = {k: v / 2**20 for k, v in est.items()}
            raise CaptureError(
                f"this capture would hold about {mib['total']:.0f} MiB (attention {mib['attention']:.0f} MiB, "
                f"latents {mib['latents']:.0f} MiB), over max_bytes={self.max_bytes / 2**20:.0f} MiB. Reduce it: "
                "heads=False (head mean), layers='up_blocks.1' (fewer layers), uncond=False, tokens='prompt', "
                "fewer steps or a smaller image; or raise max_bytes."
            )
        self.sizes = {n: level_size(self.latent, lv) for n, lv in self.levels.items()}
        self._positions: dict[torch.device, torch.Tensor] = {}
        timesteps = sched.timesteps.detach().cpu()  # one host sync per generation, none per step
        first = (timesteps == torch.as_tensor(self._t_of_first_call).cpu()).nonzero()
        self.expected_steps = len(timesteps) - (int(first[0]) if len(first) else 0)
        self._step_signature = inspect.signature(self.original_step)
        self.latents, self.x0, self.t = [], [], []
        self.noise_cond, self.noise_uncond = [], []
        self.maps: dict[str, list] = defaultdict(list)
        self.maps_uncond: dict[str, list] = defaultdict(list)
        self.state = "running"

    def _name_tokens(self) -> None:
        ids = self.ids[0][0].tolist()
        texts = self.tokenizer.convert_ids_to_tokens(ids)
        end = self.tokenizer.eos_token_id
        n = next((i for i in range(1, len(ids)) if ids[i] == end), len(ids) - 1)  # first end token
        words: list[str] = []
        tokens: list[Token] = []
        piece = ""
        for pos in range(len(ids)):
            word = None
            if 0 < pos < n:
                word = len(words)
                piece += texts[pos].removesuffix("</w>")
                if texts[pos].endswith("</w>") or pos == n - 1:
                    words.append(piece)
                    piece = ""
            tokens.append(Token(pos, texts[pos], word))
        keep = {"prompt": range(1, n), "special": range(n + 1), "all": range(len(ids))}[self.tokens_mode]
        self.positions = list(keep)
        self.trace.words, self.trace.tokens = words, [tokens[p] for p in keep]
        self.trace.prompt = self.tokenizer.decode(ids[1:n])
        if len(self.ids) > 1:
            neg = self.ids[1][0].tolist()
            m = neg.index(end, 1) if end in neg[1:] else len(neg)
            self.trace.negative_prompt = self.tokenizer.decode(neg[1:m])

    def _x0_from(self, eps: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        """x0 for schedulers that do not return it (DPM-Solver, PNDM, UniPC): VP parameterisation."""
        ab = self._alpha_bar(t).to(sample.device, torch.float32)
        kind = self.pipe.scheduler.config.get("prediction_type", "epsilon")
        x, e = sample.float(), eps.float()
        if kind == "v_prediction":
            x0 = ab.sqrt() * x - (1 - ab).sqrt() * e
        elif kind == "sample":
            x0 = e
        else:
            x0 = (x - (1 - ab).sqrt() * e) / ab.sqrt()
        return x0.to(sample.dtype)

    def _alpha_bar(self, t) -> torch.Tensor:
        """alpha_bar at (possibly fractional) timestep ``t``, interpolated in alphas_cumprod."""
        ac = self.pipe.scheduler.alphas_cumprod.float().cpu()
        t = torch.as_tensor(t, dtype=torch.float32).cpu().clamp(0, len(ac) - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=len(ac) - 1)
        return ac[lo] + (t - lo) * (ac[hi] - ac[lo])

    def _attention_of_step(self) -> None:
        """Turn this step's queued q/k into maps: one matmul + softmax per group of equal shapes."""
        half = slice(None) if self.uncond else slice(-1, None)  # batch is [uncond, cond] under guidance
        for group, items in self.pending.items():
            if group[0] == "probs":
                probs = torch.stack([p for _, p, _ in items])[:, half]  # [layer, b, head, query, token]
            else:
                q = torch.stack([q for _, q, _ in items])[:, half]
                k = torch.stack([k for _, _, k in items])[:, half]
                probs = ((q @ k.transpose(-1, -2)).float() * group[2]).softmax(-1)
            probs = probs[..., self.positions_on(probs.device)]
            if not self.heads:
                probs = probs.mean(2, keepdim=True)
            probs = probs.to(ATTN_DTYPE).transpose(-1, -2)  # [layer, b, head, token, query]
            for (name, *_), p in zip(items, probs):
                p = p.unflatten(-1, self.sizes[name])
                self.maps[name].append(p[-1])
                if self.uncond and p.shape[0] == 2:
                    self.maps_uncond[name].append(p[0])
        self.pending.clear()

    def positions_on(self, device: torch.device) -> torch.Tensor:
        """The stored token positions as an index tensor on ``device`` (made once per device)."""
        if device not in self._positions:
            self._positions[device] = torch.tensor(self.positions, dtype=torch.long, device=device)
        return self._positions[device]

    def finish_early(self) -> None:
        """Keep the steps recorded so far when a generation stopped before its last step."""
        if self.state == "running" and self.t:
            self._finish()
            self.trace.options["complete"] = False

    def _finish(self) -> None:
        """Stack the per-step lists into the Trace (one move to the CPU for the whole generation)."""
        tr, cpu = self.trace, lambda xs: torch.stack(xs).cpu()
        t = torch.stack([torch.as_tensor(x, dtype=torch.float32).reshape(()).cpu() for x in self.t])
        tr.timesteps, tr.alpha_bar = t, self._alpha_bar(t)
        tr.sigma = ((1 - tr.alpha_bar) / tr.alpha_bar).sqrt()
        tr.latents, tr.x0, tr.noise_cond = cpu(self.latents), cpu(self.x0), cpu(self.noise_cond)
        tr.noise_uncond = cpu(self.noise_uncond) if self.cfg else None
        tr.guidance_scale = float(getattr(self.pipe, "guidance_scale", 1.0)) if self.cfg else 1.0
        modules = self._modules
        tr.layers = [Layer(n, self.sizes[n], modules[n].heads) for n in self.levels if n in self.maps]
        tr.attn = {n: cpu(self.maps[n]) for n in self.levels if n in self.maps}
        tr.attn_uncond = {n: cpu(self.maps_uncond[n]) for n in self.levels if n in self.maps_uncond}
        tr.height, tr.width = self.pixels
        unet_config = json.dumps(dict(self.pipe.unet.config), sort_keys=True, default=str)
        tr.model = {
            "name": str(getattr(self.pipe, "name_or_path", "") or self.pipe.config.get("_name_or_path", "")),
            "pipeline": type(self.pipe).__name__,
            "unet_config_sha256": hashlib.sha256(unet_config.encode()).hexdigest()[:16],
            "dtype": str(self.pipe.unet.dtype).removeprefix("torch."),
        }
        sched = self.pipe.scheduler
        tr.scheduler = {"name": type(sched).__name__, "config": json.loads(json.dumps(dict(sched.config), default=str))}
        tr.options = {**self.options, "diffviz_version": __version__}
        self.maps = self.maps_uncond = self.latents = self.x0 = None  # drop the device references
        self.state = "done"


def _empty_trace(options: dict) -> Trace:
    """The Trace a ``with diffviz.trace(pipe)`` block yields before the pipeline has run."""
    empty = torch.zeros(0)
    return Trace(prompt="", negative_prompt=None, words=[], tokens=[], layers=[], height=0, width=0,
                 guidance_scale=1.0, timesteps=empty, alpha_bar=empty, sigma=empty, latents=empty,
                 x0=empty, noise_cond=empty, noise_uncond=None, attn={}, options=dict(options))
