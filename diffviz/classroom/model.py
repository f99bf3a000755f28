"""The classroom model: real diffusers/transformers components, built from config, as a
StableDiffusionPipeline.

Shapes at the training size: image ``[3, 64, 64]`` -> latents ``[4, 16, 16]`` (AutoencoderKL, 4x down);
prompt -> ``[77, 64]`` token states (CLIPTextModel with no transformer layers: each token is its own
embedding plus a position embedding, so a word's attention map is about that word alone);
UNet2DConditionModel with cross-attention at 16x16 and 8x8 and no spatial self-attention (``unet_config``).
The shipped model's size is ``data.IMAGE_SIZE``, read from its config.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .data import vocabulary
from .tokenizer import build_tokenizer, read_any_text, unknown_words

WEIGHTS = Path(__file__).parent / "weights"
TEXT_DIM = 64
MAX_TOKENS = 77  # as Stable Diffusion

TRAIN_SIZE = 32  # pixels: the size `python -m diffviz.classroom.train` trains at (v3); latents are 4x smaller


def vae_config(image_size: int = TRAIN_SIZE) -> dict:
    """AutoencoderKL: 3 levels (32, 64, 64 channels), 4x down, 4 latent channels; convolutional, so any
    size."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16, sample_size=image_size,
    )


def unet_config(image_size: int = TRAIN_SIZE, channels: tuple[int, ...] | None = None) -> dict:
    """UNet2DConditionModel for ``image_size`` pixels.

    64 px (v2): latents 16x16; cross-attention at 16x16 (4 heads) and 8x8 (6 heads), a plain 4x4 level for
    whole-image context (a relation needs to see both objects). 32 px (v1, v3): cross-attention at 8x8 and
    4x4.
    ``channels`` replaces ``block_out_channels`` (one per level, multiples of 16).
    Every attention layer is ``only_cross_attention``: ``attn1`` reads the prompt too, and no pixel attends to
    another pixel, so a word map is not smeared by self-attention. 16 channels per head throughout.
    """
    common = dict(sample_size=image_size // 4, in_channels=4, out_channels=4, layers_per_block=1,
                  norm_num_groups=16, cross_attention_dim=TEXT_DIM, only_cross_attention=True,
                  mid_block_type=None)
    if image_size <= 32:
        config = dict(common, down_block_types=("CrossAttnDownBlock2D",) * 2,
                      up_block_types=("CrossAttnUpBlock2D",) * 2, block_out_channels=(64, 128))
    else:
        config = dict(common,
                      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                      block_out_channels=(64, 96, 128))
    if channels is not None:
        config["block_out_channels"] = tuple(channels)
    # diffusers reads attention_head_dim as the number of heads here: 16 channels a head
    return dict(config, attention_head_dim=tuple(c // 16 for c in config["block_out_channels"]))


SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing",
    prediction_type="epsilon",
)


def tokenizer():
    """The classroom ``CLIPTokenizer``: each vocabulary word is one token; other words split into
    characters."""
    return build_tokenizer(vocabulary(), model_max_length=MAX_TOKENS)


def build_components(seed: int = 0, image_size: int = TRAIN_SIZE, text_layers: int = 0,
                     channels: tuple[int, ...] | None = None, prediction: str = "epsilon") -> dict:
    """Fresh, randomly initialised components for ``image_size`` pixels (the same for the same ``seed``).

    ``text_layers`` causal self-attention layers in the text encoder (0: each token state is its own embedding
    plus its position's); ``channels`` per UNet level (``unet_config``); ``prediction`` is the scheduler's
    ``prediction_type`` ("epsilon" or "v_prediction"), the target the UNet is trained on.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM,
        num_hidden_layers=text_layers,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=TEXT_DIM,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return dict(
        vae=AutoencoderKL(**vae_config(image_size)),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tok,
        unet=UNet2DConditionModel(**unet_config(image_size, channels)),
        scheduler=DDIMScheduler(**dict(SCHEDULER_CONFIG, prediction_type=prediction)),
    )


def assemble(components: dict):
    """A ``StableDiffusionPipeline`` from ``build_components``-style parts (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def load_pipeline(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """The trained classroom ``StableDiffusionPipeline``, loaded offline (from the package by default).

    ``pipe("a red circle left of a green triangle", num_inference_steps=25).images[0]`` is an ``IMAGE_SIZE``
    square PIL image.
    ``pipe.tokenizer`` splits a word outside ``vocabulary()`` into characters; ``unknown(pipe, prompt)``
    names such words.
    """
    from ..pipelines import quiet_loading

    path = Path(path) if path is not None else WEIGHTS
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"no classroom model at {path}; "
                                "train one with `python -m diffviz.classroom.train`")
    with quiet_loading():
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
    read_any_text(pipe.tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def unknown(pipe, prompt: str) -> list[str]:
    """Words of ``prompt`` the pipeline's tokenizer does not know as a single token (the model never saw
    them)."""
    return unknown_words(pipe.tokenizer, prompt)
