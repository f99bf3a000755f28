"""PixArt-alpha and PixArt-sigma: a DiT (``PixArtTransformer2DModel``) with cross-attention over T5 tokens.

Each ``transformer_blocks.i.attn2`` is cross-attention as in Stable Diffusion (image queries on a grid
of 2x2 latent patches, T5 keys), so the processor and the DDPM-style schedule are SD's. T5's padding
keys are masked (``encoder_attention_mask``): the maps are computed with the same mask, so padding gets
no attention. The transformer predicts noise and a variance; the sampler gets the noise half.
"""

from __future__ import annotations

import torch

from ...traces import Layer, guide
from ..processor import cross_attention
from . import t5
from .base import TransformerDenoiser, padded_ids, register, running_guidance
from .ddpm import DDPMSchedule


@register
class PixArtFamily(t5.OneT5, TransformerDenoiser, DDPMSchedule):
    name = "pixart"
    pipelines = "PixArtAlphaPipeline, PixArtSigmaPipeline (DiT with cross-attention over T5)"
    transformer_class = "PixArtTransformer2DModel"

    def __init__(self, pipe):
        super().__init__(pipe)
        self._guidance: float | None = None  # classifier-free guidance scale of the running call; None: none
        self._n_text: int | None = None  # T5 positions the transformer reads (max_sequence_length)

    def layers(self, latent: tuple[int, int]) -> list[Layer]:
        size = self.token_grid(latent)
        return [Layer(f"transformer_blocks.{i}.attn2", size, b.attn2.heads, f"cross {i}", "cross")
                for i, b in enumerate(self.denoiser.transformer_blocks)]

    def self_layers(self, latent: tuple[int, int]) -> list[Layer]:
        """The ``attn1`` image self-attention modules, for ``trace(pipe, queries=...)``."""
        size = self.token_grid(latent)
        return [Layer(f"transformer_blocks.{i}.attn1", size, b.attn1.heads, f"self {i}", "self")
                for i, b in enumerate(self.denoiser.transformer_blocks)]

    def processor(self, name: str, original, sink, edit):
        return cross_attention(name, original, sink, edit)

    def denoiser_io(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, object]:
        self._guidance = running_guidance(self.pipe)
        self._n_text = int(kwargs["encoder_hidden_states"].shape[1])
        return super().denoiser_io(args, kwargs)

    def guided(self) -> bool:
        return self._guidance is not None

    def guidance_scale(self) -> float:
        return 1.0 if self._guidance is None else self._guidance

    def prediction(self, output) -> torch.Tensor:
        """The noise half of the output (the other half is the learned variance)."""
        out = output[0] if isinstance(output, tuple) else output.sample
        c = self.latent_channels()
        return out[:, :c] if out.shape[1] == 2 * c else out

    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    def model_info(self) -> dict:
        """Adds the number of text keys (``max_sequence_length``), which attribution needs."""
        return super().model_info() | {"text_keys": self._n_text}

    def step_model(self, trace, step: int, target: str) -> PixArtStepModel:
        return PixArtStepModel(self, trace, step, target)


class PixArtStepModel:
    """The transformer call at one traced step as a function of T5's token ids (float32), for attribution;
    T5 and the transformer use the prompt's attention mask throughout (the baseline's padding tokens stay
    visible, as a replaced word would be). ``prediction(embeds, mask)``: [n, C, h, w] guided x0 or noise."""

    def __init__(self, family: PixArtFamily, trace, step: int, target: str):
        pipe = family.pipe
        self.family, self.pipe, self.trace, self.target = family, pipe, trace, target
        self.denoiser, self.device = pipe.transformer, pipe.transformer.device
        self.encoders = [pipe.text_encoder.encoder]  # T5's stack: its embed_tokens is the one it runs
        self.n_text = trace.model.get("text_keys") or 120
        ids, self.mask = self._tokenize(trace.prompt)
        self.ids = [ids]
        self.cfg = trace.noise_uncond is not None
        self.t = trace.timesteps[step].to(self.device)
        ab = trace.alpha_bar[step].double()
        sigma_space = float(getattr(pipe.scheduler, "init_noise_sigma", 1.0)) > 1.0  # Euler-type samplers
        self.in_scale = float(ab.sqrt()) if sigma_space else 1.0
        self.latent = trace.latents[step].to(self.device, torch.float32)[None]
        self.added = {"resolution": None, "aspect_ratio": None}
        if self.denoiser.use_additional_conditions:
            h, w = trace.height, trace.width
            self.added = {"resolution": torch.tensor([[h, w]], dtype=torch.float32, device=self.device),
                          "aspect_ratio": torch.tensor([[h / w]], dtype=torch.float32, device=self.device)}
        self.uncond = None

    def _tokenize(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipe.tokenizer(text, padding="max_length", max_length=self.n_text, truncation=True,
                                  add_special_tokens=True, return_tensors="pt")
        return out.input_ids.to(self.device), out.attention_mask.to(self.device)

    def baseline_ids(self, positions=None) -> list[torch.Tensor]:
        """T5 ids with the word tokens (or only ``positions``) replaced by the padding token."""
        return [padded_ids(self.trace, self.ids[0], self.pipe.tokenizer.pad_token_id, positions)]

    def prepare(self) -> None:
        with torch.no_grad():
            ids, mask = self._tokenize(self.trace.negative_prompt or "")
            self.uncond = (self.encoders[0](ids, attention_mask=mask)[0], mask)

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, text] T5 ids -> (embeds [n, text, D], the prompt's attention mask [n, text])."""
        mask = self.mask.expand(ids.shape[0], -1)
        return self.encoders[0](ids, attention_mask=mask)[0], mask

    def prediction(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = embeds.shape[0]
        x = self.latent.expand(n, -1, -1, -1) * self.in_scale
        if self.cfg:
            ue, um = self.uncond
            embeds, mask = torch.cat([ue.expand(n, -1, -1), embeds]), torch.cat([um.expand(n, -1), mask])
            x = x.repeat(2, 1, 1, 1)
        added = {k: None if v is None else v.expand(x.shape[0], -1) for k, v in self.added.items()}
        out = self.denoiser(x, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                            timestep=self.t.expand(x.shape[0]), added_cond_kwargs=added, return_dict=False)
        out = self.family.prediction(out).float()
        if self.cfg:
            out = guide(*out.chunk(2), self.trace.guidance_scale)
        if self.target == "noise":
            return out
        return self.family.x0(out, self.t, x[:n]).float()
