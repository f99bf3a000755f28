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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from .classroom.tokenizer import build_tokenizer
from .pipelines import scheduler_class

WORDS = ["a", "an", "the", "red", "green", "blue", "yellow", "purple", "orange", "circle", "square",
         "triangle", "left", "right", "of", "above", "below", "photo", "cat", "dog", "large", "small", "and",
         "on", "in"]


def scheduler(name: str = "ddim"):
    """A scheduler with Stable Diffusion's noise schedule: "ddim", "euler" or "dpm" (DPM-Solver++)."""
    kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
              steps_offset=1)
    if name == "ddim":
        kw |= dict(clip_sample=False, set_alpha_to_one=False)
    return scheduler_class(name)(**kw)


def _clip(tokenizer, hidden: int, layers: int, with_projection: bool = False, heads: int = 4,
          mlp: int = 2):
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=tokenizer.model_max_length, projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


TINY_KINDS = ("sd", "sdxl", "sd3", "flux", "pixart", "pixart-sigma", "wan", "cogvideox")
VIDEO_WORDS = ["ball", "jumps", "rolls", "falls", "then", "dog", "runs", "cat", "sleeps"]


def tiny_pipeline(kind: str = "sd", scheduler_name: str = "ddim", seed: int = 0):
    """A random-weight pipeline of ``kind`` (one of ``TINY_KINDS``) for 64x64 images, float32, CPU.

    "sd"/"sdxl": 32x32 latents, ``scheduler_name`` picks the sampler. "sd3", "flux": 16x16 image
    tokens (2x2 patches of 32x32 latents), flow matching (FlowMatchEulerDiscreteScheduler).
    "pixart", "pixart-sigma": 16x16 image tokens, ``scheduler_name`` picks the sampler; call them with
    ``use_resolution_binning=False`` (their bins start at 256 px). Flux's default size is 256 px:
    pass ``height=64, width=64``. "wan", "cogvideox": text-to-video, 64x64 px and 9 frames by default
    (3 latent frames of 8x8 cells; 3x4x4 video tokens), flow matching (Wan) or CogVideoX's DDIM
    (v-prediction); call them with ``max_sequence_length=16`` (T5 positions) to keep them small.
    """
    if kind in ("wan", "cogvideox"):
        return _tiny_video(kind, seed)
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


SDXL_UNET = {  # SDXL 1.0's UNet2DConditionModel config (1024 px images, 128x128 latents)
    "sample_size": 128, "block_out_channels": (320, 640, 1280), "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


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
        unet = UNet2DConditionModel(**SDXL_UNET).eval()
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=_clip(tokenizer, 768, 12, heads=12, mlp=4), tokenizer=tokenizer,
            text_encoder_2=_clip(tokenizer, 1280, 32, with_projection=True, heads=20, mlp=4),
            tokenizer_2=tokenizer, unet=unet, scheduler=scheduler(scheduler_name),
        )
    raise ValueError(f"kind must be 'sd15' or 'sdxl', not {kind!r}.")


# ---- diffusion transformers: SD3, Flux, PixArt ------------------------------------------------------
T5_SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5
WORD_START = "\u2581"  # SentencePiece's "▁": the piece begins a word


def t5_tokenizer(words: Sequence[str] = WORDS, model_max_length: int = 512, whitespace: bool = False):
    """A T5 tokenizer (SentencePiece-style unigram, built with the ``tokenizers`` library) in which each of
    ``words`` is one piece ``"▁word"``; any other word falls apart into ``"▁"`` and character pieces, the
    way T5 splits a rare word. Case-sensitive, like T5. Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2.
    ``whitespace=True``: the other kind of T5 tokenizer, split on whitespace and punctuation first, one piece
    per word with no word-start mark (an unknown word is ``<unk>``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    if whitespace:
        vocab = {t: i for i, t in enumerate([*T5_SPECIAL, *dict.fromkeys(words), *string.punctuation])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    else:
        chars = [c for c in string.printable if c.strip()]
        pieces = [(t, 0.0) for t in T5_SPECIAL] + [(WORD_START + w, -2.0) for w in dict.fromkeys(words)]
        pieces += [(WORD_START, -4.0)] + [(c, -6.0) for c in chars]
        tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
        tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always",
                                                     split=True)
        tok.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=model_max_length)


def _t5(tokenizer, d_model: int, layers: int, heads: int = 4, d_ff: float = 2, d_kv: int | None = None):
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_kv or d_model // heads,
                      d_ff=int(d_ff * d_model), num_layers=layers, num_heads=heads,
                      feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
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


# the shapes of the video models: (T5 d_model, layers, heads, d_ff / d_model, d_kv), VAE, transformer configs
_T5_XXL = (4096, 24, 64, 2.5, 64)
_VIDEO_SHAPES = {
    "wan-tiny": ((32, 2, 4, 2, 8),
                 dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                      temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
                 dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                      out_channels=4, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2,
                      cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)),
    # Wan 2.1 T2V 1.3B: 30 blocks of 12 heads x 128, UMT5-XXL, the 16-channel Wan VAE
    "wan": (_T5_XXL, {},
            dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)),
    "cogvideox-tiny": ((32, 2, 4, 2, 8),
                       dict(down_block_types=("CogVideoXDownBlock3D",) * 4,
                            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                            latent_channels=4, layers_per_block=1, norm_num_groups=2),
                       dict(num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4,
                            time_embed_dim=2, text_embed_dim=32, num_layers=2, sample_width=8,
                            sample_height=8, sample_frames=9, patch_size=2, max_text_seq_length=16)),
    # CogVideoX-2b: 30 blocks of 30 heads x 64, T5-XXL, the 16-channel CogVideoX VAE, 49 frames of 480x720
    "cogvideox": (_T5_XXL, {},
                  dict(num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16,
                       time_embed_dim=512, text_embed_dim=4096, num_layers=30, sample_width=90,
                       sample_height=60, sample_frames=49, patch_size=2, max_text_seq_length=226)),
}


def _video_parts(kind: str, tok) -> dict[str, torch.nn.Module]:
    """The text encoder, VAE and transformer of a video model of ``kind`` (``_VIDEO_SHAPES``), as the
    current init context makes them."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        AutoencoderKLWan,
        CogVideoXTransformer3DModel,
        WanTransformer3DModel,
    )

    (d, layers, heads, ff, kv), vae, transformer = _VIDEO_SHAPES[kind]
    if kind.startswith("wan"):
        from transformers import UMT5Config, UMT5EncoderModel

        text = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=d, d_kv=kv, d_ff=int(ff * d),
                                           num_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
                                           pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
        return {"text_encoder": text.eval(), "vae": AutoencoderKLWan(**vae).eval(),
                "transformer": WanTransformer3DModel(**transformer).eval()}
    return {"text_encoder": _t5(tok, d, layers, heads=heads, d_ff=ff, d_kv=kv),
            "vae": AutoencoderKLCogVideoX(temporal_compression_ratio=4, **vae).eval(),
            "transformer": CogVideoXTransformer3DModel(temporal_compression_ratio=4, **transformer).eval()}


def _video_pipeline(kind: str, parts: dict[str, torch.nn.Module], tok):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, UniPCMultistepScheduler, WanPipeline

    if kind.startswith("wan"):  # Wan's sampler: UniPC on flow sigmas, shift 3 at 480 px
        sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=3.0)
        return WanPipeline(tokenizer=tok, scheduler=sched, **parts)
    return CogVideoXPipeline(tokenizer=tok, scheduler=CogVideoXDDIMScheduler(timestep_spacing="trailing"),
                             **parts)


def _tiny_video(kind: str, seed: int):
    torch.manual_seed(seed)
    tok = t5_tokenizer([*WORDS, *VIDEO_WORDS])
    return _video_pipeline(kind, _video_parts(f"{kind}-tiny", tok), tok)


def full_size_video(kind: str = "wan", device: str | torch.device = "cuda",
                    dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A random-weight pipeline with the shapes of Wan 2.1 T2V 1.3B ("wan": 480x832, 81 frames) or
    CogVideoX-2b ("cogvideox": 480x720, 49 frames), with their T5-XXL text encoders; "wan-tiny" and
    "cogvideox-tiny" run the same code at test size. Built on the meta device and initialised on
    ``device`` (``device="meta"``: left there, shapes without weights, e.g. for ``diffviz.estimate_bytes``).
    The vocabulary is ``WORDS`` and ``VIDEO_WORDS``."""
    if kind not in _VIDEO_SHAPES:
        raise ValueError(f"kind must be one of {sorted(_VIDEO_SHAPES)}, not {kind!r}.")
    tok = t5_tokenizer([*WORDS, *VIDEO_WORDS])
    with _parameters_on_meta():
        parts = _video_parts(kind, tok)
    if torch.device(device).type == "meta":  # shapes only: what diffviz.estimate_bytes needs
        made = {name: torch.nn.Module.to(m, dtype) for name, m in parts.items()}
    else:
        made = {name: _materialise(m, device, dtype, seed + i) for i, (name, m) in enumerate(parts.items())}
    return _video_pipeline(kind, made, tok)


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory, no initialisation);
    buffers (position ids, sin-cos tables) are made as usual."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _materialise(model: torch.nn.Module, device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """Random weights for a model built by ``_parameters_on_meta``, made on ``device`` in ``dtype``:
    norm scales 1, biases 0, other weights normal(0, 0.02)."""
    g = torch.Generator(device).manual_seed(seed)
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            t = torch.empty(p.shape, device=device, dtype=dtype)
            if name == "bias":
                t.zero_()
            elif p.ndim == 1:
                t.fill_(1.0)
            else:
                t.normal_(0.0, 0.02, generator=g)
            module._parameters[name] = torch.nn.Parameter(t, requires_grad=False)
    return torch.nn.Module.to(model, device, dtype).eval()  # buffers too; diffusers' .to() adds a warning


# (T5: d_model, layers, heads, d_ff ratio, d_kv), (CLIP-L, CLIP-G: hidden, layers, heads), transformer config
_DIT_SHAPES = {
    "sd3": ((4096, 24, 64, 2.5, 64), (768, 12, 12), (1280, 32, 20), dict(
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
        pooled_projection_dim=2048, pos_embed_max_size=192)),
    "flux": ((4096, 24, 64, 2.5, 64), (768, 12, 12), None, dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56))),
    # the same code path at a size a CPU test runs in a second (benchmarks/gpu_capture.py --tiny)
    "sd3-tiny": ((64, 1, 4, 2, 16), (32, 1, 4), (32, 1, 4), dict(
        sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=32)),
    "flux-tiny": ((32, 1, 4, 2, 8), (32, 1, 4), None, dict(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6))),
}


def full_size_dit(kind: str = "sd3", device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                  seed: int = 0):
    """A random-weight pipeline with the shapes of SD3-medium ("sd3": 2B-parameter MMDiT, CLIP-L, CLIP-G,
    T5-XXL) or Flux-dev ("flux": 12B-parameter transformer, 19 double- and 38 single-stream blocks, CLIP-L,
    T5-XXL), 1024 px native; "sd3-tiny" and "flux-tiny" run the same code at test size. Built on the meta
    device and initialised on ``device`` (seconds on a GPU; a 12B model built on a CPU takes minutes).
    The vocabulary is ``WORDS``; the VAE is the 16-channel one of both models."""
    from diffusers import (
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    if kind not in _DIT_SHAPES:
        raise ValueError(f"kind must be one of {sorted(_DIT_SHAPES)}, not {kind!r}.")
    (d_t5, n_t5, h_t5, ff_t5, kv_t5), clip_l, clip_g, config = _DIT_SHAPES[kind]
    sd3, tiny = kind.startswith("sd3"), kind.endswith("tiny")
    clip_tok, t5_tok = build_tokenizer(list(WORDS)), t5_tokenizer()
    with _parameters_on_meta():
        vae = AutoencoderKL(
            block_out_channels=(16, 32) if tiny else (128, 256, 512, 512), layers_per_block=1 if tiny else 2,
            latent_channels=16, norm_num_groups=8 if tiny else 32,
            down_block_types=("DownEncoderBlock2D",) * (2 if tiny else 4),
            up_block_types=("UpDecoderBlock2D",) * (2 if tiny else 4), use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=1.5305 if sd3 else 0.3611, shift_factor=0.0609 if sd3 else 0.1159,
        )
        parts = {"vae": vae, "t5": _t5(t5_tok, d_t5, n_t5, heads=h_t5, d_ff=ff_t5, d_kv=kv_t5),
                 "clip_l": _clip(clip_tok, clip_l[0], clip_l[1], with_projection=sd3, heads=clip_l[2], mlp=4)}
        if sd3:
            parts["clip_g"] = _clip(clip_tok, clip_g[0], clip_g[1], with_projection=True, heads=clip_g[2],
                                    mlp=4)
        parts["transformer"] = (SD3Transformer2DModel if sd3 else FluxTransformer2DModel)(**config)
    made = {name: _materialise(m, device, dtype, seed + i) for i, (name, m) in enumerate(parts.items())}
    if sd3:
        return StableDiffusion3Pipeline(
            transformer=made["transformer"], scheduler=flow_scheduler("sd3"), vae=made["vae"],
            text_encoder=made["clip_l"], tokenizer=clip_tok, text_encoder_2=made["clip_g"],
            tokenizer_2=clip_tok, text_encoder_3=made["t5"], tokenizer_3=t5_tok,
        )
    return FluxPipeline(transformer=made["transformer"], scheduler=flow_scheduler("flux"), vae=made["vae"],
                        text_encoder=made["clip_l"], tokenizer=clip_tok, text_encoder_2=made["t5"],
                        tokenizer_2=t5_tok)
