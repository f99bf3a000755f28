"""Stable Diffusion 1.x/2.x, SDXL and the classroom model: a UNet2DConditionModel read by CLIP.

The prompt-reading layers are the ``attn2`` cross-attention modules and, in U-Nets built with
``only_cross_attention`` (the classroom model), the ``attn1`` modules, which then read the prompt
too. A layer in ``down_blocks.i`` works at the latent size halved i times; ``up_blocks.j`` mirrors it;
the mid block at the coarsest size. Text keys are CLIP's 77 positions (SDXL: both encoders' states
side by side, the same positions). x0 and the schedule follow DDPM's alphas_cumprod.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...traces import Layer, Token, Trace, guide
from ..processor import cross_attention
from .base import PromptTokens, padded_ids, register
from .ddpm import DDPMSchedule

BLOCK_ORDER = {"down": 0, "mid": 1, "up": 2}
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


@register
class SDFamily(DDPMSchedule):
    name = "sd"
    pipelines = ("StableDiffusionPipeline, StableDiffusionXLPipeline and their Img2Img/Inpaint variants (any "
                 "diffusers pipeline with a UNet2DConditionModel and a CLIP text encoder)")

    @classmethod
    def matches(cls, pipe) -> bool:
        return hasattr(type(getattr(pipe, "unet", None)), "attn_processors")  # the class: no module walk

    def __init__(self, pipe):
        super().__init__(pipe)
        if getattr(pipe, "text_encoder", None) is None and getattr(pipe, "text_encoder_2", None) is None:
            raise TypeError(f"{type(pipe).__name__} has no text encoder, so there are no words to trace. "
                            f"Supported: {self.pipelines}.")
        first = getattr(pipe, "text_encoder", None) is not None
        self.encoder = pipe.text_encoder if first else pipe.text_encoder_2
        self.tokenizer = pipe.tokenizer if first else pipe.tokenizer_2
        modules = dict(pipe.unet.named_modules())
        attention = [n for n, m in modules.items() if hasattr(m, "get_processor")]  # attn_processors' order
        self._specs = self._find_layers(modules, attention)
        self._self_specs = self._find_layers(modules, attention, prompt=False)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipe.unet

    # ---- layers --------------------------------------------------------------------------------
    def _find_layers(self, modules: dict[str, torch.nn.Module], attention: list[str],
                     prompt: bool = True) -> list[tuple[str, int, str, str, int]]:
        """(name, level, block, label, heads) of each prompt-reading module (``prompt``) or each
        self-attention module, in run order. Labels are plain words: "first down block", "middle block",
        "second up block (2 of 3)", and ", attn1" for an attn1 that reads the prompt."""
        unet = self.pipe.unet
        n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
        found = []
        for name in attention:
            last = name.rsplit(".", 1)[-1]
            reads = last == "attn2" or last == "attn1" and getattr(modules[name], "is_cross_attention", False)
            if reads if prompt else last == "attn1" and not reads:
                found.append(name)
        if not found and prompt:
            raise TypeError("this U-Net has no cross-attention (attn2) layers, so no word can be traced.")
        kinds = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}
        block_of = {n: ".".join(n.split(".")[:1 if n.startswith("mid_block") else 2]) for n in found}
        specs = []
        for name in found:
            parts, last = name.split("."), name.rsplit(".", 1)[-1]
            kind = kinds.get(parts[0], parts[0])
            if kind == "down":
                level = int(parts[1])
            elif kind == "up":
                level = n_up - 1 - int(parts[1])
            else:
                level = n_down - 1
            same_kind = list(dict.fromkeys(b for b in block_of.values() if b.startswith(parts[0] + ".")))
            nth = ("" if kind == "mid"
                   else ORDINALS[min(same_kind.index(block_of[name]), len(ORDINALS) - 1)] + " ")
            siblings = [n for n in found if block_of[n] == block_of[name] and n.endswith(last)]
            which = f" ({siblings.index(name) + 1} of {len(siblings)})" if len(siblings) > 1 else ""
            suffix = ", attn1" if prompt and last == "attn1" else ""
            label = f"{nth}{'middle' if kind == 'mid' else kind} block{which}{suffix}"
            specs.append((name, level, kind, label, modules[name].heads))
        return sorted(specs, key=lambda s: (BLOCK_ORDER.get(s[2], 3), found.index(s[0])))

    def layers(self, latent: tuple[int, int]) -> list[Layer]:
        return _described(self._specs, latent)

    def self_layers(self, latent: tuple[int, int]) -> list[Layer]:
        """attn1 modules that are self-attention (image to image); none in the classroom model."""
        return _described(self._self_specs, latent)

    def processor(self, name: str, original, sink, edit):
        return cross_attention(name, original, sink, edit)

    # ---- the prompt ------------------------------------------------------------------------------
    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.encoder]

    def read_prompt(self, ids: list[list[torch.Tensor]], prompt: int) -> PromptTokens:
        calls, tok = ids[0], self.tokenizer
        out = clip_tokens(tok, calls[0][min(prompt, len(calls[0]) - 1)].tolist())
        if len(calls) > 1:
            neg = calls[1][min(prompt, len(calls[1]) - 1)].tolist()
            end = tok.eos_token_id
            m = neg.index(end, 1) if end in neg[1:] else len(neg)
            out.negative_prompt = tok.decode(neg[1:m])
        return out

    def latent_channels(self) -> int:
        config = self.pipe.unet.config
        return config.in_channels if config.in_channels <= 4 else config.out_channels  # inpainting: 9 in

    def step_model(self, trace, step: int, target: str) -> SDStepModel:
        return SDStepModel(self.pipe, trace, step, target)


def _described(specs, latent: tuple[int, int]) -> list[Layer]:
    return [Layer(name, (math.ceil(latent[0] / 2**level), math.ceil(latent[1] / 2**level)), heads, label,
                  block)
            for name, level, block, label, heads in specs]


def clip_tokens(tokenizer, row: list[int], encoder: str | None = None) -> PromptTokens:
    """One CLIP input-id row read as words: a word ends at a token spelt with ``</w>``; the start token,
    the first end token and the padding after it belong to no word. ``encoder`` names the tokens' encoder
    (SD3 reads the prompt through CLIP and T5; None for SD)."""
    texts = tokenizer.convert_ids_to_tokens(row)
    end = tokenizer.eos_token_id
    n = next((i for i in range(1, len(row)) if row[i] == end), len(row) - 1)  # first end token
    words: list[str] = []
    tokens: list[Token] = []
    piece = ""
    for pos in range(len(row)):
        word = None
        if 0 < pos < n:
            word = len(words)
            piece += texts[pos].removesuffix("</w>")
            if texts[pos].endswith("</w>") or pos == n - 1:
                words.append(piece)
                piece = ""
        tokens.append(Token(pos, texts[pos], word, encoder))
    return PromptTokens(tokenizer.decode(row[1:n]), None, words, tokens, special=[0, n])


class SDStepModel:
    """The pipeline's U-Net call at one traced step, as functions of the prompt (float32), for attribution.

    ``ids``: [n, 77] token ids -> prompt embeddings; ``prediction(embeds)``: [n, C, h, w] guided x0 or
    noise, exactly what the sampler saw at that step (checked against the trace in the tests).
    """

    def __init__(self, pipe, trace: Trace, step: int, target: str):
        self.pipe, self.trace, self.step, self.target = pipe, trace, step, target
        self.denoiser = pipe.unet
        self.device = pipe.unet.device
        self.xl = getattr(pipe, "text_encoder_2", None) is not None
        self.encoders = [e for e in (getattr(pipe, "text_encoder", None),
                                     getattr(pipe, "text_encoder_2", None))
                         if e is not None]
        self.tokenizers = [pipe.tokenizer, pipe.tokenizer_2] if self.xl else [pipe.tokenizer]
        self.ids = [self._tokenize(t, trace.prompt) for t in self.tokenizers]
        self.cfg = trace.noise_uncond is not None
        self.latent = trace.latents[step].to(self.device, torch.float32)[None]
        self.t = trace.timesteps[step].to(self.device)
        ab = trace.alpha_bar[step].double()
        sigma_space = float(getattr(pipe.scheduler, "init_noise_sigma", 1.0)) > 1.0  # Euler-type samplers
        self.in_scale = float((ab.sqrt()) if sigma_space else 1.0)  # = 1 / sqrt(sigma^2 + 1) there
        self.sqrt_ab, self.sqrt_1mab = float(ab.sqrt()), float((1 - ab).sqrt())
        self.kind = pipe.scheduler.config.get("prediction_type", "epsilon")
        if self.xl:
            h, w = trace.height, trace.width
            self.time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=self.device)
        self.uncond = None

    def _tokenize(self, tokenizer, text: str) -> torch.Tensor:
        return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def baseline_ids(self, positions: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Prompt ids with the word tokens (or only ``positions``) replaced by the padding token."""
        return [padded_ids(self.trace, ids, tok.pad_token_id, positions)
                for tok, ids in zip(self.tokenizers, self.ids)]

    def encode(self, *ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (one tensor per text encoder) -> (embeds [n, 77, D], pooled [n, P] or None)."""
        if not self.xl:
            mask = None
            if getattr(self.encoders[0].config, "use_attention_mask", False):
                mask = (ids[0] != self.tokenizers[0].pad_token_id).long()
            return self.encoders[0](ids[0], attention_mask=mask)[0], None
        states, pooled = [], None
        for enc, i in zip(self.encoders, ids):
            out = enc(i, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            if out[0].ndim == 2:
                pooled = out[0]
        return torch.cat(states, -1), pooled

    def prepare(self) -> None:
        """Encode the negative prompt once, outside captum's hooks (it does not depend on the prompt)."""
        with torch.no_grad():
            neg = self.trace.negative_prompt
            if self.xl and not neg and self.pipe.config.get("force_zeros_for_empty_prompt", True):
                e, p = self.encode(*self.ids)
                self.uncond = (torch.zeros_like(e), torch.zeros_like(p))
            else:
                self.uncond = self.encode(*[self._tokenize(t, neg or "") for t in self.tokenizers])

    def prediction(self, embeds: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """[n, C, h, w] float32 guided prediction (x0 or noise) for prompt embeddings [n, 77, D]."""
        n = embeds.shape[0]
        x = (self.latent * self.in_scale).expand(n, -1, -1, -1)
        kw = {}
        if self.cfg:
            ue, up = self.uncond
            embeds = torch.cat([ue.expand(n, -1, -1), embeds])
            pooled = None if pooled is None else torch.cat([up.expand(n, -1), pooled])
            x = torch.cat([x, x])
        if self.xl:
            kw["added_cond_kwargs"] = {"text_embeds": pooled,
                                       "time_ids": self.time_ids.expand(x.shape[0], -1)}
        out = self.pipe.unet(x, self.t, encoder_hidden_states=embeds, **kw, return_dict=False)[0].float()
        if self.cfg:
            out = guide(*out.chunk(2), self.trace.guidance_scale)
        if self.target == "noise":
            return out
        x = x[:n]
        if self.kind == "v_prediction":
            return self.sqrt_ab * x - self.sqrt_1mab * out
        if self.kind == "sample":
            return out
        return (x - self.sqrt_1mab * out) / self.sqrt_ab
