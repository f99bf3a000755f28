"""Stable Diffusion 3 / 3.5: an MMDiT (``SD3Transformer2DModel``) whose joint attention reads CLIP-L,
CLIP-G and T5.

Each ``transformer_blocks.i.attn`` runs one softmax over the image tokens (a 2x2 patch of latents
each) followed by the text tokens. The text keys are 77 CLIP positions (CLIP-L and CLIP-G states side by
side in the channels, so one position holds both) and then T5's tokens (``max_sequence_length``,
256 by default): key position 77 + i is T5 token i. The word maps are the image-query rows and text-key
columns, renormalised over the text keys (``diffviz.capture.joint``). SD3.5's extra ``attn2`` is image
self-attention and reads no prompt. The scheduler is flow matching (``flow.py``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ...traces import Layer, Token, guide
from .. import joint
from ..processor import split_heads
from . import t5
from .base import PromptTokens, TransformerDenoiser, register, require_processor
from .flow import FlowMatching
from .sd import clip_tokens


@register
class SD3Family(TransformerDenoiser, FlowMatching):
    name = "sd3"
    pipelines = "StableDiffusion3Pipeline and its Img2Img/Inpaint variants (SD3, SD3.5: MMDiT, CLIP and T5)"
    joint = True
    transformer_class = "SD3Transformer2DModel"
    _n_text: int | None = None  # text keys (77 + T5's), read at the first denoiser call

    def layers(self, latent: tuple[int, int]) -> list[Layer]:
        size = self.token_grid(latent)
        return [Layer(f"transformer_blocks.{i}.attn", size, block.attn.heads, f"joint {i}", "joint")
                for i, block in enumerate(self.denoiser.transformer_blocks)]

    def processor(self, name: str, original, sink, edit):
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        require_processor(name, original, JointAttnProcessor2_0, "SD3",
                          "IP-Adapter, PAG and fused processors are")
        return JointProcessor(name, sink, edit)

    def denoiser_io(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, object]:
        self._n_text = int(kwargs["encoder_hidden_states"].shape[1])
        return super().denoiser_io(args, kwargs)

    def model_info(self) -> dict:
        """Adds the number of text keys (77 + T5's max_sequence_length), which attribution needs."""
        return super().model_info() | {"text_keys": self._n_text}

    def step_model(self, trace, step: int, target: str) -> SD3StepModel:
        return SD3StepModel(self, trace, step, target)

    # ---- the prompt ------------------------------------------------------------------------------
    def text_encoders(self) -> list[torch.nn.Module]:
        """CLIP-L (its tokens name the 77 CLIP positions; CLIP-G's are the same) and T5 when present."""
        encoders = (self.pipe.text_encoder, getattr(self.pipe, "text_encoder_3", None))
        return [e for e in encoders if e is not None]

    def read_prompt(self, ids: list[list[torch.Tensor]], prompt: int) -> PromptTokens:
        """Words are T5's (it reads up to 256 tokens, CLIP 75, and keeps the case); CLIP's tokens are
        matched to them by their letters. Without T5 (``text_encoder_3=None``) words are CLIP's."""
        pipe = self.pipe
        clip = clip_tokens(pipe.tokenizer, t5.first_row(ids[0], prompt), "clip")
        if len(ids) < 2:
            return clip
        offset = pipe.tokenizer_max_length
        text, words, tokens, special = t5.read(pipe.tokenizer_3, t5.first_row(ids[1], prompt), offset)
        owner = t5.align(words, clip.words)
        clip_tokens_ = [Token(tok.position, tok.text, None if tok.word is None else owner[tok.word], "clip")
                        for tok in clip.tokens]
        negative = None
        if len(ids[1]) > 1:
            negative = t5.read(pipe.tokenizer_3, t5.first_row(ids[1][1:], prompt), offset)[0]
        return PromptTokens(text, negative, words, clip_tokens_ + tokens, special=clip.special + special)


class JointProcessor:
    """diffusers' ``JointAttnProcessor2_0`` op for op (so the image is bitwise unchanged), which hands the
    sink the image queries [b, head, image, d] and text keys [b, head, text, d] it made anyway; with an
    ``edit``, the image rows' text attention is changed as ``joint.edited`` describes."""

    def __init__(self, layer: str, sink, edit):
        self.layer, self.sink, self.edit = layer, sink, edit

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value = split_heads(attn, attn.to_q(hidden_states), attn.to_k(hidden_states),
                                        attn.to_v(hidden_states))
        if encoder_hidden_states is not None:
            shape = (batch_size, -1, attn.heads, query.shape[-1])
            text_q = attn.add_q_proj(encoder_hidden_states).view(shape).transpose(1, 2)
            text_k = attn.add_k_proj(encoder_hidden_states).view(shape).transpose(1, 2)
            text_v = attn.add_v_proj(encoder_hidden_states).view(shape).transpose(1, 2)
            if attn.norm_added_q is not None:
                text_q = attn.norm_added_q(text_q)
            if attn.norm_added_k is not None:
                text_k = attn.norm_added_k(text_k)
            query = torch.cat([query, text_q], dim=2)
            key = torch.cat([key, text_k], dim=2)
            value = torch.cat([value, text_v], dim=2)

        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        if encoder_hidden_states is not None:
            n = residual.shape[1]  # image tokens first, then text
            probs = None
            if self.edit is not None:
                out, probs = joint.edited(hidden_states[:, :, :n], query[:, :, :n], key[:, :, :n],
                                          key[:, :, n:], value[:, :, n:], attn.scale,
                                          functools.partial(self.edit, self.layer))
                hidden_states = torch.cat([out, hidden_states[:, :, n:]], dim=2)
            if self.sink is not None and self.sink.wants(self.layer):
                joint.keep(self.sink, self.layer, attn, query[:, :, :n], key[:, :, :n], key[:, :, n:], probs)
            if self.sink is not None and self.sink.wants_self(self.layer):
                self.sink.keep_self(self.layer, attn, query[:, :, :n], key[:, :, :n])
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * query.shape[-1])
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]], hidden_states[:, residual.shape[1]:],
            )
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


class SD3StepModel:
    """The transformer call at one traced step as a function of the token ids of CLIP-L, CLIP-G and T5
    (float32), for attribution. ``offsets``: the text key of each encoder's first id (the CLIPs share keys
    0..76, T5 follows). ``prediction(embeds, pooled)``: [n, C, h, w] guided x0 or velocity."""

    def __init__(self, family: SD3Family, trace, step: int, target: str):
        pipe = family.pipe
        self.pipe, self.trace, self.target = pipe, trace, target
        self.denoiser, self.device = pipe.transformer, pipe.transformer.device
        self.n_clip = pipe.tokenizer_max_length
        n_t5 = (trace.model.get("text_keys") or self.n_clip + 256) - self.n_clip
        t5 = getattr(pipe, "text_encoder_3", None)
        # T5's stack: its embed_tokens is the one it runs (transformers 5 keeps a separate `shared`)
        self.encoders = [pipe.text_encoder, pipe.text_encoder_2] + ([t5.encoder] if t5 is not None else [])
        self.tokenizers = [(pipe.tokenizer, self.n_clip), (pipe.tokenizer_2, self.n_clip)]
        self.tokenizers += [(pipe.tokenizer_3, n_t5)] if t5 is not None else []
        self.offsets = [0, 0, self.n_clip][: len(self.encoders)]
        self.n_t5, self.dim = n_t5, pipe.transformer.config.joint_attention_dim
        self.ids = self._tokenize(trace.prompt)
        self.cfg = trace.noise_uncond is not None
        self.latent = trace.latents[step].to(self.device, torch.float32)[None]
        self.t = trace.timesteps[step].to(self.device)
        self.sigma = 1 / (1 + 1 / float(trace.sigma[step]))  # the scheduler's s (trace.sigma = s / (1 - s))
        self.uncond = None

    def _tokenize(self, text: str) -> list[torch.Tensor]:
        return [tok(text, padding="max_length", max_length=n, truncation=True, add_special_tokens=True,
                    return_tensors="pt").input_ids.to(self.device) for tok, n in self.tokenizers]

    def baseline_ids(self, positions=None) -> list[torch.Tensor]:
        """Every encoder's ids with the word tokens (or the text keys ``positions``) made padding."""
        words = [t.position for t in self.trace.tokens if t.word is not None]
        keys = words if positions is None else positions
        out = []
        for (tok, n), offset, ids in zip(self.tokenizers, self.offsets, self.ids, strict=True):
            ids = ids.clone()
            ids[:, [k - offset for k in keys if offset <= k < offset + n]] = tok.pad_token_id
            out.append(ids)
        return out

    def prepare(self) -> None:
        with torch.no_grad():
            self.uncond = self.encode(*self._tokenize(self.trace.negative_prompt or ""))

    def encode(self, *ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids -> (embeds [n, text keys, D], pooled [n, P]), as the pipeline's encode_prompt."""
        clip_l = self.encoders[0](ids[0], output_hidden_states=True)
        clip_g = self.encoders[1](ids[1], output_hidden_states=True)
        clip = torch.cat([clip_l.hidden_states[-2], clip_g.hidden_states[-2]], dim=-1)
        clip = F.pad(clip, (0, self.dim - clip.shape[-1]))
        n = ids[0].shape[0]
        t5 = self.encoders[2](ids[2])[0] if len(ids) > 2 else clip.new_zeros(n, self.n_t5, self.dim)
        return torch.cat([clip, t5], dim=-2), torch.cat([clip_l[0], clip_g[0]], dim=-1)

    def prediction(self, embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        n = embeds.shape[0]
        x = self.latent.expand(n, -1, -1, -1)
        if self.cfg:
            ue, up = self.uncond
            embeds, pooled = torch.cat([ue.expand(n, -1, -1), embeds]), torch.cat([up.expand(n, -1), pooled])
            x = torch.cat([x, x])
        out = self.denoiser(hidden_states=x, timestep=self.t.expand(x.shape[0]), encoder_hidden_states=embeds,
                            pooled_projections=pooled, return_dict=False)[0].float()
        if self.cfg:
            out = guide(*out.chunk(2), self.trace.guidance_scale)
        if self.target == "noise":
            return out
        return self.latent - self.sigma * out
