"""From latents to pixels: the exact VAE decode and a fast linear preview fitted per model.

The preview is a 3 x (C + 1) matrix (latent channels plus a bias) fitted by least squares on the
image the pipeline itself decoded, so a saved trace can show every step's x0 without the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[3, H, W] floats in [-1, 1] (a VAE's output) -> [H, W, 3] uint8, rounded as diffusers does; a video's
    [3, frame, H, W] -> [frame, H, W, 3]."""
    return ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).movedim(0, -1).cpu()


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """[C, h, w] latents in the pipeline's (scaled) space -> [H, W, 3] uint8 through ``vae``."""
    if latents.ndim != 3:
        raise ValueError("decode takes an image's [C, h, w] latents; a video's latents are normalised per "
                         "model (Wan, CogVideoX): use trace.preview, or the pipeline's own decoding.")
    p = next(vae.parameters())
    z = latents[None].to(p.device, p.dtype) / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):
        z = z + vae.config.shift_factor
    return to_uint8(vae.decode(z, return_dict=False)[0][0])


def fit_preview(latents: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Least-squares [3, C + 1] map from ``latents`` [C, h, w] to ``image`` [H, W, 3] uint8,
    with the image average-pooled to the latent grid; for a video, [C, frame, h, w] latents and the
    [frame, H, W, 3] output frames that match them one to one."""
    c, (h, w) = latents.shape[0], latents.shape[-2:]
    frames = image.reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2).float() / 255  # [frame, 3, H, W]
    rgb = F.adaptive_avg_pool2d(frames, (h, w)).transpose(0, 1)  # [3, frame, h, w]
    x = torch.cat([latents.float().reshape(c, -1), torch.ones(1, rgb[0].numel())]).T  # [cells, C+1]
    y = rgb.reshape(3, -1).T  # [cells, 3]
    return torch.linalg.lstsq(x, y, driver="gelsd").solution.T.contiguous()


def preview(latents: torch.Tensor, weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, h, w] latents -> [H, W, 3] uint8 at ``size`` through a map from ``fit_preview``; a video's
    [C, frame, h, w] -> [frame, H, W, 3]."""
    c, lead = latents.shape[0], latents.shape[1:-2]
    rgb = weight[:, :c] @ latents.float().reshape(c, -1) + weight[:, c:]  # [3, cells]
    rgb = rgb.reshape(3, -1, *latents.shape[-2:]).transpose(0, 1)  # [frame, 3, h, w]
    rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).reshape(*lead, *size, 3)
