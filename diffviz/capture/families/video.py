"""What text-to-video families share: a frame axis in the latents and the query grid, the VAE's temporal
compression, and the decoded video.

A video's latents are ``[B, C, frame, h, w]`` once unpacked (``unpack``; CogVideoX steps on
``[B, frame, C, h, w]``), where a latent frame stands for ``temporal_compression`` output frames (the
first for one: ``(frames - 1) // tc + 1`` latent frames). A layer's query grid is ``(frame, h, w)`` tokens
(``token_grid``), frame-major as the transformers flatten them. The video itself is read from
``vae.decode`` (the video VAEs run their decoder once per chunk of frames, so its output is not the video).
"""

from __future__ import annotations

import inspect

import torch

from .base import TransformerDenoiser


class VideoFamily(TransformerDenoiser):
    """Mixin for text-to-video families whose denoiser is ``pipe.transformer``."""

    video = True
    maps_per_layer = True

    @property
    def vae_scale(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor_spatial", 8))

    @property
    def temporal_compression(self) -> int:
        """Output frames per latent frame (after the first)."""
        return int(getattr(self.pipe, "vae_scale_factor_temporal", 4))

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a video of ``frames`` output frames."""
        return (frames - 1) // self.temporal_compression + 1

    def default_frames(self) -> int:
        """Output frames the pipeline makes when none are asked for (its ``num_frames`` default)."""
        default = inspect.signature(type(self.pipe).__call__).parameters["num_frames"].default
        return int(default) if isinstance(default, int) else 49

    def latent_grid(self, height: int | None = None, width: int | None = None,
                    frames: int | None = None) -> tuple[int, ...]:
        """(frame, h, w) latent cells of a video of ``frames`` x ``height`` x ``width`` (None: defaults)."""
        h, w = self.image_size(height, width)
        return self.latent_frames(frames or self.default_frames()), h // self.vae_scale, w // self.vae_scale

    def latent_size(self, sample: torch.Tensor) -> tuple[int, ...]:
        return tuple(int(n) for n in self.unpack(sample[:1]).shape[-3:])

    def token_grid(self, latent: tuple[int, ...]) -> tuple[int, int, int]:
        """(frame, h, w) of the video tokens for a latent grid of (frame, h, w) cells."""
        p, pt = self.patch()
        return latent[0] // pt, latent[1] // p, latent[2] // p

    def patch(self) -> tuple[int, int]:
        """(spatial, temporal) patch size of the transformer's tokens."""
        raise NotImplementedError

    def output_bytes(self, latent: tuple[int, ...]) -> int:
        """Bytes of the decoded video ([frame, H, W, 3] uint8) of a latent grid (frame, h, w)."""
        frames = (latent[0] - 1) * self.temporal_compression + 1
        return frames * latent[1] * latent[2] * self.vae_scale**2 * 3

    def model_info(self) -> dict:
        return super().model_info() | {"temporal_compression": self.temporal_compression}


class ScaledAttention:
    """What the recorder reads of an attention module (its ``scale``), for modules that keep none (Wan's)."""

    def __init__(self, scale: float):
        self.scale = scale
