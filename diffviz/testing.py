"""Pipelines with random weights built from config, for tests and benchmarks (nothing is downloaded).

``tiny_pipeline`` gives a Stable-Diffusion-shaped (or SDXL-shaped) pipeline small enough for a
CPU test: cross-attention at two resolutions, a CLIP text encoder and tokenizer made here.
``full_size_pipeline`` has the layer shapes of Stable Diffusion 1.5 or SDXL (same U-Net, VAE and
text encoders, random weights, a small vocabulary), for speed and memory benchmarks on a GPU.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .classroom.tokenizer import build_tokenizer
from .pipelines import scheduler_class
WORDS = ("a an the red green blue yellow purple orange circle square triangle left right of above below "
         "photo cat dog large small and on in").split()


def scheduler(name: str = "ddim"):
    """A scheduler with Stable Diffusion's noise schedule: "ddim", "euler" or "dpm" (DPM-Solver++)."""
    kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
              steps_offset=1)
    if name == "ddim":
        kw |= dict(clip_sample=False, set_alpha_to_one=False)
    return scheduler_class(name)(**kw)


def _clip(tokenizer, hidden: int, layers: int, with_projection: bool = False, heads: int = 4, mlp: int = 2):
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=tokenizer.model_max_length, projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def tiny_pipeline(kind: str = "sd", scheduler_name: str = "ddim", seed: int = 0):
    """A random-weight SD ("sd") or SDXL ("sdxl") pipeline for 64x64 images (32x32 latents), float32, CPU."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(list(WORDS))
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    common = dict(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
    )
    if kind == "sd":
        unet = UNet2DConditionModel(cross_attention_dim=32, **common)
        return StableDiffusionPipeline(
            vae=vae.eval(), text_encoder=_clip(tokenizer, 32, 2), tokenizer=tokenizer, unet=unet.eval(),
            scheduler=scheduler(scheduler_name), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    if kind == "sdxl":
        unet = UNet2DConditionModel(
            cross_attention_dim=64, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=6 * 8 + 32, **common,
        )
        return StableDiffusionXLPipeline(
            vae=vae.eval(), text_encoder=_clip(tokenizer, 32, 2), tokenizer=tokenizer,
            text_encoder_2=_clip(tokenizer, 32, 2, with_projection=True), tokenizer_2=tokenizer,
            unet=unet.eval(), scheduler=scheduler(scheduler_name),
        )
    raise ValueError(f"kind must be 'sd' or 'sdxl', not {kind!r}.")


def full_size_pipeline(kind: str = "sd15", scheduler_name: str = "ddim", seed: int = 0):
    """A random-weight pipeline with the shapes of SD 1.5 ("sd15": 860M-parameter U-Net, 512 px) or
    SDXL ("sdxl": 2.6B-parameter U-Net, 1024 px), float32 on the CPU; move it with ``.to()``."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(list(WORDS))
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215 if kind == "sd15" else 0.13025, force_upcast=kind == "sdxl",
    ).eval()
    if kind == "sd15":
        unet = UNet2DConditionModel(
            sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768, attention_head_dim=8,
        ).eval()
        return StableDiffusionPipeline(
            vae=vae, text_encoder=_clip(tokenizer, 768, 12, heads=12, mlp=4), tokenizer=tokenizer, unet=unet,
            scheduler=scheduler(scheduler_name), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    if kind == "sdxl":
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ).eval()
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=_clip(tokenizer, 768, 12, heads=12, mlp=4), tokenizer=tokenizer,
            text_encoder_2=_clip(tokenizer, 1280, 32, with_projection=True, heads=20, mlp=4), tokenizer_2=tokenizer,
            unet=unet, scheduler=scheduler(scheduler_name),
        )
    raise ValueError(f"kind must be 'sd15' or 'sdxl', not {kind!r}.")
