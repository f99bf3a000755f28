"""The capture engine on real (tiny) diffusers pipelines: what it records, and that it changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffviz
from diffviz.capture import CaptureError, estimate_bytes

from .conftest import PROMPT, generate


def snapshot(pipe):
    """Everything a trace touches, by identity."""
    return (dict(pipe.unet.attn_processors), dict(vars(pipe.scheduler)), dict(pipe.unet._forward_hooks),
            dict(pipe.unet._forward_pre_hooks), dict(pipe.text_encoder._forward_pre_hooks),
            dict(pipe.vae.decoder._forward_hooks))


def assert_same(before, after):
    procs_b, sched_b, *hooks_b = before
    procs_a, sched_a, *hooks_a = after
    assert procs_a.keys() == procs_b.keys() and all(procs_a[k] is procs_b[k] for k in procs_b)
    assert sched_a.keys() == sched_b.keys() and "step" not in sched_a
    assert hooks_a == hooks_b


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_traced_image_is_bitwise_the_untraced_one(kind, sd_pipe, sdxl_pipe):
    pipe = sd_pipe if kind == "sd" else sdxl_pipe
    plain = np.asarray(generate(pipe))
    before = snapshot(pipe)
    with diffviz.trace(pipe) as tr:
        traced = np.asarray(generate(pipe))
    assert_same(before, snapshot(pipe))
    assert np.array_equal(plain, traced)
    assert np.array_equal(tr.image.numpy(), traced)  # the trace holds the very image returned


def test_every_scheduler_records_shapes_and_x0(sd_pipe_any_scheduler):
    pipe = sd_pipe_any_scheduler
    with diffviz.trace(pipe) as tr:
        generate(pipe, steps=5)
    n, c, h, w = 5, 4, 32, 32
    assert tr.latents.shape == (n + 1, c, h, w) and tr.x0.shape == (n, c, h, w)
    assert tr.noise_cond.shape == tr.noise_uncond.shape == (n, c, h, w)
    assert tr.timesteps.shape == tr.sigma.shape == tr.alpha_bar.shape == (n,)
    assert torch.all(tr.timesteps[:-1] > tr.timesteps[1:])  # the sampler walks t down
    assert torch.all(tr.sigma[:-1] > tr.sigma[1:]) and torch.all((tr.alpha_bar > 0) & (tr.alpha_bar <= 1))
    # x0 is consistent with the VP identity x_t = sqrt(ab) x0 + sqrt(1 - ab) eps for the guided eps
    if pipe.scheduler.init_noise_sigma == 1.0:
        ab = tr.alpha_bar.view(-1, 1, 1, 1)
        rebuilt = ab.sqrt() * tr.x0 + (1 - ab).sqrt() * tr.noise_guided
        assert torch.allclose(rebuilt, tr.latents[:-1], atol=1e-3)
    else:  # Euler: x_t = x0 + sigma * eps, in the scheduler's (unscaled) space
        rebuilt = tr.x0 + tr.sigma.view(-1, 1, 1, 1) * tr.noise_guided
        assert torch.allclose(rebuilt, tr.latents[:-1], atol=1e-2)
    assert tr.scheduler["name"] == type(pipe.scheduler).__name__


def test_attention_rows_sum_to_one_over_the_whole_context(sd_pipe):
    with diffviz.trace(sd_pipe, tokens="all", heads=True) as tr:
        generate(sd_pipe)
    assert len(tr.tokens) == 77
    for layer in tr.layers:
        maps = tr.attn[layer.name]  # [step, head, token, h, w]
        assert maps.shape == (4, layer.heads, 77, *layer.size)
        assert torch.allclose(maps.float().sum(2), torch.ones(()), atol=2e-2)


def test_layers_are_named_by_path_and_resolution(traced, sd_pipe):
    _, tr = traced
    attn2 = [k.removesuffix(".processor") for k in sd_pipe.unet.attn_processors if "attn2" in k]
    assert sorted(l.name for l in tr.layers) == sorted(attn2)
    assert [l.block for l in tr.layers] == ["down", "down", "mid", "up", "up", "up", "up"]  # run order
    assert tr.layers[-1].label == "second up block (2 of 2)" and tr.layers[2].label == "middle block"
    sizes = {l.name.split(".")[0] + "." + l.name.split(".")[1]: l.size for l in tr.layers}
    assert sizes["down_blocks.0"] == (32, 32) and sizes["down_blocks.1"] == (16, 16)
    assert sizes["up_blocks.0"] == (16, 16) and sizes["up_blocks.1"] == (32, 32)
    assert tr.layer_names("16x16") == [l.name for l in tr.layers if l.size == (16, 16)]


def test_words_and_tokens(traced):
    _, tr = traced
    assert tr.words == PROMPT.split()
    assert [t.position for t in tr.tokens] == list(range(1, 9))
    assert [t.word for t in tr.tokens] == list(range(8))
    assert tr.prompt == PROMPT and tr.negative_prompt == ""


def test_subword_tokens_merge_into_one_word(sd_pipe):
    with diffviz.trace(sd_pipe, tokens="special") as tr:
        generate(sd_pipe, "a zebra above a cat")  # "zebra" is not in the tiny vocabulary: 5 tokens
    assert tr.words == ["a", "zebra", "above", "a", "cat"]
    zebra = [t for t in tr.tokens if t.word == 1]
    assert [t.text for t in zebra] == ["z", "e", "b", "r", "a</w>"]
    assert tr.tokens[0].text == "<|startoftext|>" and tr.tokens[0].word is None
    assert tr.tokens[-1].text == "<|endoftext|>" and tr.tokens[-1].word is None
    # the word map sums its subword tokens; the start token is excluded unless asked for
    raw = tr.heatmap("zebra", normalize=False)
    parts = sum(tr.heatmap(tokens=t.position, normalize=False) for t in zebra)
    assert torch.allclose(raw, parts, atol=1e-5)
    assert tr.token_indices() == [i for i, t in enumerate(tr.tokens) if t.word is not None]


def test_word_heatmap_contract(traced):
    _, tr = traced
    h = tr.word_heatmap("red")
    assert h.shape == (64, 64) and h.dtype == torch.float32
    assert h.min() == 0 and h.max() == 1
    assert not torch.equal(h, tr.word_heatmap("square"))
    # one step and one layer select exactly that map (bilinear upsampling of a 32x32 map)
    layer = tr.layers[0]
    one = tr.heatmap("red", steps=2, layers=layer.name, normalize=False, size=layer.size)
    assert torch.allclose(one, tr.attn[layer.name][2, 0, 1].float(), atol=1e-6)


def test_uncond_and_heads_on_request(sd_pipe):
    with diffviz.trace(sd_pipe, uncond=True, heads=True, layers="up_blocks.1") as tr:
        generate(sd_pipe)
    assert all(l.name.startswith("up_blocks.1") for l in tr.layers) and tr.layers
    assert tr.attn.keys() == tr.attn_uncond.keys()
    name = tr.layers[0].name
    assert tr.attn[name].shape[1] == tr.layers[0].heads > 1
    assert not torch.equal(tr.attn[name], tr.attn_uncond[name])
    per_head = tr.heatmap("red", heads=[0], normalize=False)
    assert not torch.allclose(per_head, tr.heatmap("red", heads=[1], normalize=False))


def test_no_guidance_records_the_conditional_pass_only(sd_pipe):
    with diffviz.trace(sd_pipe) as tr:
        generate(sd_pipe, guidance_scale=1.0)
    assert tr.noise_uncond is None and tr.guidance_scale == 1.0
    assert torch.equal(tr.noise_guided, tr.noise_cond)


def test_restored_when_generation_raises(sd_pipe):
    plain = np.asarray(generate(sd_pipe))
    before = snapshot(sd_pipe)

    def boom(pipe, step, t, kwargs):
        if step == 2:
            raise RuntimeError("user callback failed")
        return kwargs

    with pytest.raises(RuntimeError, match="user callback failed"), diffviz.trace(sd_pipe) as tr:
        generate(sd_pipe, callback_on_step_end=boom)
    assert_same(before, snapshot(sd_pipe))
    assert tr.num_steps == 3 and tr.options["complete"] is False  # what ran is kept
    # and the pipeline still generates the image it made before the failed trace
    assert np.array_equal(np.asarray(generate(sd_pipe)), plain)


def test_users_callback_still_runs_and_sees_every_step(sd_pipe):
    seen = []

    def mine(pipe, step, t, kwargs):
        seen.append(step)
        return kwargs

    with diffviz.trace(sd_pipe) as tr:
        generate(sd_pipe, callback_on_step_end=mine)
    assert seen == [0, 1, 2, 3] and tr.num_steps == 4


def test_several_images_per_call_give_one_trace_each(sd_pipe):
    """Two prompts x two images: four traces, each with its prompt, its image and its own maps: image i of
    the batch has the maps a call for it alone has (same noise through a per-image generator)."""
    prompts = [PROMPT, "a blue square above a green circle"]
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    kw = dict(num_inference_steps=3, height=64, width=64, num_images_per_prompt=2)
    plain = sd_pipe(prompts, generator=gens, **kw).images
    before = snapshot(sd_pipe)
    with diffviz.trace(sd_pipe) as run:
        images = sd_pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in range(4)], **kw).images
    assert_same(before, snapshot(sd_pipe))
    assert run.state == "done" and len(run) == 4
    assert [t.prompt for t in run] == [prompts[0]] * 2 + [prompts[1]] * 2
    assert [t.options["image"] for t in run] == [0, 1, 2, 3]
    for t, traced, untraced in zip(run, images, plain):
        assert np.array_equal(np.asarray(traced), np.asarray(untraced))
        assert np.array_equal(t.image.numpy(), np.asarray(traced))
    with pytest.raises(CaptureError, match="made 4 images.*traces\\[i\\]"):
        run.heatmap("red")
    with diffviz.trace(sd_pipe) as alone:  # image 3 = prompt 1 with seed 3, alone
        sd_pipe(prompts[1], generator=torch.Generator().manual_seed(3), **{**kw, "num_images_per_prompt": 1})
    mine = run[3]
    assert mine.words == alone.words and mine.tokens == alone.tokens
    torch.testing.assert_close(mine.latents, alone.latents, atol=1e-4, rtol=0)
    for name in alone.attn:
        torch.testing.assert_close(mine.attn[name].float(), alone.attn[name].float(), atol=2e-3, rtol=0)


def test_second_generation_in_one_block_is_refused(sd_pipe):
    with pytest.raises(CaptureError, match="already holds a generation"), diffviz.trace(sd_pipe):
        generate(sd_pipe)
        generate(sd_pipe)


def test_memory_is_estimated_and_an_oversized_capture_refused(sd_pipe):
    est = estimate_bytes(sd_pipe, 64, 64, num_inference_steps=4, n_tokens=8)
    with diffviz.trace(sd_pipe) as tr:
        generate(sd_pipe)
    held = sum(m.numel() * m.element_size() for m in tr.attn.values())
    assert est["attention"] == held
    latents = sum(t.numel() * t.element_size() for t in (tr.latents, tr.x0, tr.noise_cond, tr.noise_uncond))
    assert est["latents"] == latents
    heads = estimate_bytes(sd_pipe, 64, 64, num_inference_steps=4, n_tokens=8, heads=True)
    assert heads["attention"] > est["attention"]
    with (pytest.raises(CaptureError, match=r"over max_bytes.*heads=False.*layers="),
          diffviz.trace(sd_pipe, heads=True, max_bytes=est["total"])):
        generate(sd_pipe)


def test_bad_input_gets_clear_errors(traced, sd_pipe):
    _, tr = traced
    with pytest.raises(KeyError, match=r"'green' is not a word of the prompt.*\['a', 'red', 'circle'"):
        tr.word_heatmap("green")
    with pytest.raises(IndexError, match="step 9 is out of range: this trace has 4 steps"):
        tr.heatmap("red", steps=9)
    with pytest.raises(ValueError, match="no captured layer matches 'side'"):
        tr.heatmap("red", layers="side")
    with pytest.raises(ValueError, match="mean over heads.*heads=True"):
        tr.heatmap("red", heads=0)
    with pytest.raises(ValueError, match="tokens must be one of"):
        diffviz.trace(sd_pipe, tokens="everything").__enter__()
    with (pytest.raises(TypeError, match="cannot trace a object.*Supported: StableDiffusionPipeline"),
          diffviz.trace(object())):
        pass


def test_prompt_embeds_without_text_are_refused(sd_pipe):
    embeds = sd_pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
    with pytest.raises(CaptureError, match="prompt as text"), diffviz.trace(sd_pipe):
        sd_pipe(prompt_embeds=embeds, num_inference_steps=2, height=64, width=64, guidance_scale=1.0)


def test_img2img_traces_the_steps_it_runs(sd_pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**sd_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    start = generate(sd_pipe)
    with diffviz.trace(pipe) as tr:
        pipe(PROMPT, image=start, strength=0.5, num_inference_steps=8,
             generator=torch.Generator().manual_seed(0))
    assert tr.num_steps == 4 and tr.options.get("complete", True) and tr.image is not None
    assert tr.timesteps[0] < 600


def test_previews_and_vae_decode(traced, sd_pipe):
    _, tr = traced
    last = tr.decode(-1, sd_pipe.vae, of="latents")
    assert torch.equal(last, tr.decode(4, sd_pipe.vae, of="latents"))  # index num_steps = the final latents
    assert last.shape == (64, 64, 3) and last.dtype == torch.uint8
    # decoding the final latents reproduces the output image (to rounding: kernels may differ)
    assert (last.int() - tr.image.int()).abs().max() <= 1
    assert tr.preview_weight.shape == (3, 5)
    p = tr.preview(-1, of="latents")
    assert p.shape == (64, 64, 3) and p.dtype == torch.uint8
    # the linear preview is a least-squares fit on this very image: closer to it than a flat grey
    grey = torch.full_like(tr.image, 128)
    assert (p.float() - tr.image.float()).abs().mean() < (grey.float() - tr.image.float()).abs().mean()


def test_an_empty_prompt_traces_with_no_words(sd_pipe):
    with diffviz.trace(sd_pipe, tokens="special") as tr:
        generate(sd_pipe, "")
    assert tr.words == [] and [t.text for t in tr.tokens] == ["<|startoftext|>", "<|endoftext|>"]
    assert tr.heatmap(tokens=0).shape == (64, 64)
    with pytest.raises(ValueError, match="no tokens selected"):
        tr.heatmap()
