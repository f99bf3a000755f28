"""Flux: a transformer (``FluxTransformer2DModel``) of double-stream joint blocks and single-stream blocks,
read by T5 (CLIP gives only a pooled vector, no tokens).

Both kinds of block attend over one sequence, text tokens first, then the image tokens (a 2x2 patch of
latents each, with rotary positions): ``transformer_blocks.i.attn`` (block "joint") keeps separate
weights per stream, ``single_transformer_blocks.i.attn`` (block "single") runs on the concatenated
sequence. Both read the prompt; the word maps are the image-query rows and text-key columns,
renormalised over the text keys (``diffviz.capture.joint``). The text keys are T5's
``max_sequence_length`` (512) positions. The latents are packed ([batch, tokens, 4 * channels]); a trace
stores them unpacked ([C, h, w]). Flux-dev's guidance is an input of the model, not classifier-free
guidance: the denoiser sees one batch row per image. The scheduler is flow matching (``flow.py``).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from ...traces import Layer
from .. import joint
from ..processor import qk_norm
from . import t5
from .base import CaptureError, PromptTokens, TransformerDenoiser, padded_ids, register, require_processor
from .flow import FlowMatching


@register
class FluxFamily(TransformerDenoiser, FlowMatching):
    name = "flux"
    pipelines = "FluxPipeline and its Img2Img/Inpaint variants (Flux.1-dev, -schnell: a DiT read by T5)"
    joint = True
    transformer_class = "FluxTransformer2DModel"
    classifier_free = False  # Flux-dev distils guidance into the model; true CFG is refused

    def __init__(self, pipe):
        super().__init__(pipe)
        self._grid: tuple[int, int] | None = None  # image tokens (h, w), read at the first denoiser call
        self._text = SimpleNamespace(n=None)  # text tokens: joint blocks see them, single ones need them
        self._n_text: int | None = None  # the same, read by the recorder's instance at the first call

    def token_grid(self, latent: tuple[int, int]) -> tuple[int, int]:
        return latent[0] // 2, latent[1] // 2  # the pipeline packs 2x2 latent patches into one token

    def layers(self, latent: tuple[int, int]) -> list[Layer]:
        size = self.token_grid(latent)
        t = self.denoiser
        return ([Layer(f"transformer_blocks.{i}.attn", size, b.attn.heads, f"joint {i}", "joint")
                 for i, b in enumerate(t.transformer_blocks)]
                + [Layer(f"single_transformer_blocks.{i}.attn", size, b.attn.heads, f"single {i}", "single")
                   for i, b in enumerate(t.single_transformer_blocks)])

    def processor(self, name: str, original, sink, edit):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        require_processor(name, original, FluxAttnProcessor, "Flux", "IP-Adapter is")
        return FluxProcessor(name, sink, edit, original, self._text)

    # ---- the denoiser's packed latents -----------------------------------------------------------
    def denoiser_io(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, object]:
        sample = args[0] if args else kwargs["hidden_states"]
        ids = kwargs["img_ids"]  # [tokens, 3]: (0, row, column) of each image token
        self._grid = (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)  # one host sync, at the first call
        if self._grid[0] * self._grid[1] != sample.shape[1]:
            raise CaptureError(
                f"this Flux pipeline gives the transformer {sample.shape[1]} image tokens for a "
                f"{self._grid[0]}x{self._grid[1]} grid (Kontext or Fill conditioning?); diffviz traces "
                "FluxPipeline, FluxImg2ImgPipeline and FluxInpaintPipeline.")
        self._n_text = int(kwargs["encoder_hidden_states"].shape[1])
        t = torch.as_tensor(kwargs["timestep"]).reshape(-1)[0]
        return sample, t * 1000  # the pipeline passes t / 1000

    def latent_size(self, sample: torch.Tensor) -> tuple[int, int]:
        return self._grid[0] * 2, self._grid[1] * 2

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, tokens, 4 C] -> [B, C, h, w] (FluxPipeline._unpack_latents)."""
        b, _, c4 = latents.shape
        h, w = self._grid
        x = latents.view(b, h, w, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c4 // 4, h * 2, w * 2)

    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels) // 4

    def default_size(self) -> tuple[int, int]:
        size = int(getattr(self.pipe, "default_sample_size", 128)) * self.vae_scale
        return size, size

    def guided(self) -> bool:
        return False  # true CFG (a second transformer call per step) is refused in read_prompt

    def model_info(self) -> dict:
        """Adds what attribution needs to rebuild a step: the text keys and Flux-dev's guidance input."""
        info = super().model_info() | {"text_keys": self._n_text}
        if self.denoiser.config.guidance_embeds:
            info["guidance"] = float(self.pipe.guidance_scale)
        return info

    def step_model(self, trace, step: int, target: str) -> FluxStepModel:
        return FluxStepModel(self, trace, step, target)

    # ---- the prompt ------------------------------------------------------------------------------
    def text_encoders(self) -> list[torch.nn.Module]:
        return [self.pipe.text_encoder_2]

    def read_prompt(self, ids: list[list[torch.Tensor]], prompt: int) -> PromptTokens:
        if len(ids[0]) > 1:
            raise CaptureError(
                "true classifier-free guidance (true_cfg_scale > 1 with a negative prompt) runs the Flux "
                "transformer twice per step, which diffviz does not trace yet; trace without "
                "negative_prompt / true_cfg_scale.")
        text, words, tokens, special = t5.read(self.pipe.tokenizer_2, t5.first_row(ids[0], prompt))
        return PromptTokens(text, None, words, tokens, special=special)


class FluxProcessor:
    """diffusers' ``FluxAttnProcessor`` op for op (same attention backend, so the image is bitwise
    unchanged), which hands the sink the image queries [b, head, image, d] and text keys [b, head, text, d];
    with an ``edit``, the image rows' text attention is changed as ``joint.edited`` describes."""

    def __init__(self, layer: str, sink, edit, original, text: SimpleNamespace):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        self.layer, self.sink, self.edit, self.text = layer, sink, edit, text
        self._ops = (_get_qkv_projections, apply_rotary_emb, dispatch_attention_fn)
        self._attention_backend = original._attention_backend
        self._parallel_config = original._parallel_config
        self.scaled = None  # what the sink reads the softmax scale from (FluxAttention has no .scale)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: torch.Tensor | None = None) -> torch.Tensor:
        _get_qkv_projections, apply_rotary_emb, dispatch_attention_fn = self._ops
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query, key = qk_norm(attn, query, key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        self._look(attn, query, key, value, hidden_states, encoder_hidden_states)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            n_text = encoder_hidden_states.shape[1]
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [n_text, hidden_states.shape[1] - n_text], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states

    def _look(self, attn, query, key, value, out, encoder_hidden_states) -> None:
        """Hand the sink this layer's image queries and text keys; apply the edit to ``out`` in place.
        Tensors are [b, sequence, head, d], text first."""
        if encoder_hidden_states is not None:
            self.text.n = encoder_hidden_states.shape[1]  # double-stream blocks run before single-stream ones
        watch = self.sink is not None and self.sink.wants(self.layer)
        own = self.sink is not None and self.sink.wants_self(self.layer)
        if not (watch or own) and self.edit is None:
            return
        n = self.text.n
        if n is None:
            raise CaptureError("a Flux single-stream block ran before any double-stream block: diffviz "
                               "cannot tell its text tokens from its image tokens.")
        if self.scaled is None:
            self.scaled = SimpleNamespace(scale=attn.head_dim**-0.5, heads=attn.heads)
        q, k = query.transpose(1, 2), key.transpose(1, 2)  # [b, head, sequence, d] views
        probs = None
        if self.edit is not None:
            edited, probs = joint.edited(out[:, n:].transpose(1, 2), q[:, :, n:], k[:, :, n:], k[:, :, :n],
                                         value[:, :n].transpose(1, 2), self.scaled.scale,
                                         functools.partial(self.edit, self.layer))
            out[:, n:] = edited.transpose(1, 2)
        if watch:
            joint.keep(self.sink, self.layer, self.scaled, q[:, :, n:], k[:, :, n:], k[:, :, :n], probs)
        if own:
            self.sink.keep_self(self.layer, self.scaled, q[:, :, n:], k[:, :, n:])


class FluxStepModel:
    """The transformer call at one traced step as a function of T5's token ids (float32), for attribution.
    CLIP's pooled vector is held at the prompt's: attribution goes to the T5 tokens the attention reads.
    ``prediction(embeds, pooled)``: [n, C, h, w] x0 or velocity, what the sampler saw at that step."""

    def __init__(self, family: FluxFamily, trace, step: int, target: str):
        pipe = family.pipe
        self.pipe, self.trace, self.target = pipe, trace, target
        self.denoiser, self.device = pipe.transformer, pipe.transformer.device
        self.encoders = [pipe.text_encoder_2.encoder]  # T5's stack: its embed_tokens is the one it runs
        n_text = trace.model.get("text_keys") or 512
        self.ids = [pipe.tokenizer_2(trace.prompt, padding="max_length", max_length=n_text, truncation=True,
                                     return_tensors="pt").input_ids.to(self.device)]
        self.latent = trace.latents[step].to(self.device, torch.float32)[None]  # [1, C, h, w]
        c, h, w = trace.latents.shape[1:]
        grid = self.latent.view(1, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        self.packed = grid.reshape(1, -1, c * 4)  # FluxPipeline._pack_latents
        family._grid = (h // 2, w // 2)
        self.unpack = family.unpack
        self.img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, torch.float32)
        self.txt_ids = torch.zeros(n_text, 3, device=self.device)
        self.t = trace.timesteps[step].to(self.device, torch.float32) / 1000
        self.sigma = 1 / (1 + 1 / float(trace.sigma[step]))  # the scheduler's s (trace.sigma = s / (1 - s))
        guidance = trace.model.get("guidance")
        self.guidance = None if guidance is None else torch.tensor([guidance], device=self.device)
        self.pooled = None

    def baseline_ids(self, positions=None) -> list[torch.Tensor]:
        """T5 ids with the word tokens (or only ``positions``) replaced by the padding token."""
        return [padded_ids(self.trace, self.ids[0], self.pipe.tokenizer_2.pad_token_id, positions)]

    def prepare(self) -> None:
        with torch.no_grad():
            tok = self.pipe.tokenizer
            clip = tok(self.trace.prompt, padding="max_length", max_length=tok.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.to(self.device)
            self.pooled = self.pipe.text_encoder(clip, output_hidden_states=False).pooler_output.float()

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, text] T5 ids -> (embeds [n, text, D], CLIP's pooled [n, P] of the prompt)."""
        return self.encoders[0](ids, output_hidden_states=False)[0], self.pooled.expand(ids.shape[0], -1)

    def prediction(self, embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        n = embeds.shape[0]
        out = self.denoiser(
            hidden_states=self.packed.expand(n, -1, -1), timestep=self.t.expand(n),
            guidance=None if self.guidance is None else self.guidance.expand(n), pooled_projections=pooled,
            encoder_hidden_states=embeds, txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False,
        )[0].float()
        velocity = self.unpack(out)
        if self.target == "noise":
            return velocity
        return self.latent - self.sigma * velocity
