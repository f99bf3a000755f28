"""From latents to pixels: the exact VAE decode and a fast linear preview fitted per model.

The preview is a 3 x (C + 1) matrix (latent channels plus a bias) fitted by least squares on the
image the pipeline itself decoded, so a saved trace can show every step's x0 without the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[3, H, W] floats in [-1, 1] (a VAE's output) -> [H, W, 3] uint8, rounded as diffusers does."""
    return ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu()


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """[C, h, w] latents in the pipeline's (scaled) space -> [H, W, 3] uint8 through ``vae``."""
    p = next(vae.parameters())
    z = latents[None].to(p.device, p.dtype) / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):
        z = z + vae.config.shift_factor
    return to_uint8(vae.decode(z, return_dict=False)[0][0])


def fit_preview(latents: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Least-squares [3, C + 1] map from ``latents`` [C, h, w] to ``image`` [H, W, 3] uint8,
    with the image average-pooled to the latent grid."""
    c, h, w = latents.shape
    rgb = F.adaptive_avg_pool2d(image.permute(2, 0, 1)[None].float() / 255, (h, w))[0]
    x = torch.cat([latents.float().reshape(c, -1), torch.ones(1, h * w)]).T  # [h*w, C+1]
    y = rgb.reshape(3, -1).T  # [h*w, 3]
    return torch.linalg.lstsq(x, y, driver="gelsd").solution.T.contiguous()


def preview(latents: torch.Tensor, weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, h, w] latents -> [H, W, 3] uint8 at ``size`` through a map from ``fit_preview``."""
    c, h, w = latents.shape
    rgb = weight[:, :c] @ latents.float().reshape(c, -1) + weight[:, c:]
    rgb = F.interpolate(rgb.reshape(1, 3, h, w), size=size, mode="bilinear", align_corners=False)[0]
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
