"""Pipelines with random weights built from config, for tests and benchmarks (nothing is downloaded).

``tiny_pipeline`` gives a pipeline of each traced family small enough for a CPU test: Stable
Diffusion and SDXL (cross-attention at two resolutions), SD3 (MMDiT joint attention, CLIP-L, CLIP-G
and T5), Flux (double- and single-stream blocks, CLIP and T5) and PixArt-alpha/sigma (DiT with
cross-attention over T5), with CLIP and T5 tokenizers made here from a word list.
``full_size_pipeline`` has the layer shapes of Stable Diffusion 1.5 or SDXL (same U-Net, VAE and
text encoders, random weights, a small vocabulary), for speed and memory benchmarks on a GPU;
``full_size_dit`` those of SD3-medium and Flux-dev, built on the meta device and initialised where
they will run (a 12B-parameter model built on the CPU takes minutes).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

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


TINY_KINDS = ("sd", "sdxl", "sd3", "flux", "pixart", "pixart-sigma")


def tiny_pipeline(kind: str = "sd", scheduler_name: str = "ddim", seed: int = 0):
    """A random-weight pipeline of ``kind`` (one of ``TINY_KINDS``) for 64x64 images, float32, CPU.

    "sd"/"sdxl": 32x32 latents, ``scheduler_name`` picks the sampler. "sd3", "flux": 16x16 image
    tokens (2x2 patches of 32x32 latents), flow matching (FlowMatchEulerDiscreteScheduler).
    "pixart", "pixart-sigma": 16x16 image tokens, ``scheduler_name`` picks the sampler; call them with
    ``use_resolution_binning=False`` (their bins start at 256 px). Flux's default size is 256 px:
    pass ``height=64, width=64``.
    """
    if kind in ("sd3", "flux", "pixart", "pixart-sigma"):
        return _tiny_dit(kind, scheduler_name, seed)
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
    raise ValueError(f"kind must be one of {TINY_KINDS}, not {kind!r}.")


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


# ---- diffusion transformers: SD3, Flux, PixArt ------------------------------------------------------
T5_SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5
WORD_START = "\u2581"  # SentencePiece's "▁": the piece begins a word


def t5_tokenizer(words: Sequence[str] = WORDS, model_max_length: int = 512):
    """A T5 tokenizer (SentencePiece-style unigram, built with the ``tokenizers`` library) in which each of
    ``words`` is one piece ``"▁word"``; any other word falls apart into ``"▁"`` and character pieces, the
    way T5 splits a rare word. Case-sensitive, like T5. Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = [c for c in string.printable if c.strip()]
    pieces = [(t, 0.0) for t in T5_SPECIAL] + [(WORD_START + w, -2.0) for w in dict.fromkeys(words)]
    pieces += [(WORD_START, -4.0)] + [(c, -6.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=model_max_length)


def _t5(tokenizer, d_model: int, layers: int, heads: int = 4, d_ff: int = 2, d_kv: int | None = None):
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_kv or d_model // heads,
                      d_ff=d_ff * d_model, num_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def flow_scheduler(kind: str = "sd3"):
    """FlowMatchEulerDiscreteScheduler as SD3 ("sd3": shift 3) or Flux ("flux": resolution-dependent
    shift) configure it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if kind == "flux":
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                               max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def _tiny_dit(kind: str, scheduler_name: str, seed: int):
    from diffusers import (
        FluxPipeline,
        FluxTransformer2DModel,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    clip_tok = build_tokenizer(list(WORDS))
    t5_tok = t5_tokenizer()
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        use_quant_conv=kind.startswith("pixart"), use_post_quant_conv=kind.startswith("pixart"),
        **({} if kind.startswith("pixart") else {"scaling_factor": 1.5035, "shift_factor": 0.0609}),
    ).eval()
    if kind == "sd3":
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32,
            pooled_projection_dim=64, pos_embed_max_size=32,
        ).eval()
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=flow_scheduler("sd3"), vae=vae,
            text_encoder=_clip(clip_tok, 32, 2, with_projection=True), tokenizer=clip_tok,
            text_encoder_2=_clip(clip_tok, 32, 2, with_projection=True), tokenizer_2=clip_tok,
            text_encoder_3=_t5(t5_tok, 64, 2), tokenizer_3=t5_tok,
        )
    if kind == "flux":
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ).eval()
        return FluxPipeline(
            transformer=transformer, scheduler=flow_scheduler("flux"), vae=vae,
            text_encoder=_clip(clip_tok, 32, 2), tokenizer=clip_tok, text_encoder_2=_t5(t5_tok, 32, 2),
            tokenizer_2=t5_tok,
        )
    if kind in ("pixart", "pixart-sigma"):
        transformer = PixArtTransformer2DModel(
            sample_size=32, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
            caption_channels=32, in_channels=4, out_channels=8, cross_attention_dim=24, norm_num_groups=8,
        ).eval()
        cls = PixArtAlphaPipeline if kind == "pixart" else PixArtSigmaPipeline
        return cls(tokenizer=t5_tok, text_encoder=_t5(t5_tok, 32, 2), vae=vae, transformer=transformer,
                   scheduler=scheduler(scheduler_name))
    raise ValueError(f"kind must be one of {TINY_KINDS}, not {kind!r}.")
