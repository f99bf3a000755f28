"""Tracing diffusion transformers: tiny SD3, Flux and PixArt pipelines built from config (diffviz.testing)
get the SD path's guarantees: the same image, the pipeline restored, files that round-trip, honest byte
estimates, word maps per encoder, flow-matching x0, and edits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffviz
from diffviz.testing import tiny_pipeline

from .conftest import trace_failing_mid_generation

PROMPT = "a red circle left of a blue square"
KINDS = ["sd3", "flux", "pixart"]


@pytest.fixture(scope="module")
def pipes():
    made = {}
    for kind in KINDS:
        pipe = tiny_pipeline(kind)
        pipe.set_progress_bar_config(disable=True)
        made[kind] = pipe
    return made


def call(pipe, kind: str, prompt: str = PROMPT, steps: int = 3, **kw):
    if kind == "flux":
        kw = {"height": 64, "width": 64} | kw
    if kind == "pixart":
        kw = {"use_resolution_binning": False, "clean_caption": False} | kw
    return pipe(prompt, num_inference_steps=steps, output_type="np",
                generator=torch.Generator().manual_seed(0), **kw).images


@pytest.fixture(scope="module")
def traces(pipes):
    """(untraced image made first, traced image, trace) per family, every head kept."""
    out = {}
    for kind, pipe in pipes.items():
        before = call(pipe, kind)[0]
        with diffviz.trace(pipe, heads=True) as run:
            image = call(pipe, kind)[0]
        out[kind] = (before, image, run.trace)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_traced_image_is_bitwise_the_untraced_one_and_the_pipeline_is_restored(pipes, traces, kind):
    before, image, _ = traces[kind]
    assert np.array_equal(before, image)
    procs = pipes[kind].transformer.attn_processors
    assert all(type(p).__module__.startswith("diffusers.") for p in procs.values())


@pytest.mark.parametrize("kind", KINDS)
def test_trace_holds_steps_layers_heads_words_and_estimate_equals_bytes(pipes, traces, kind):
    tr = traces[kind][2]
    blocks = {"sd3": {"joint"}, "flux": {"joint", "single"}, "pixart": {"cross"}}[kind]
    assert {layer.block for layer in tr.layers} == blocks
    assert tr.words == PROMPT.split()
    assert tr.latents.shape == (4, 4, 32, 32) and tr.x0.shape == (3, 4, 32, 32)
    assert tr.noise_cond.shape == (3, 4, 32, 32)
    assert (tr.noise_uncond is None) == (kind == "flux")  # Flux-dev's guidance is a model input
    for layer in tr.layers:
        assert layer.size == (16, 16)  # 2x2 latent patches
        assert tr.attn[layer.name].shape == (3, layer.heads, len(tr.tokens), 16, 16)
    for word in set(tr.words):
        m = tr.word_heatmap(word)
        assert m.shape == (64, 64) and float(m.max()) == 1.0
    est = diffviz.estimate_bytes(pipes[kind], 64, 64, 3, len(tr.tokens), heads=True)
    held = sum(t.numel() * t.element_size() for t in [tr.latents, tr.x0, tr.noise_cond, tr.noise_uncond,
                                                       tr.image, *tr.attn.values()] if t is not None)
    assert est["total"] == held and est["image"] == tr.image.numel()


@pytest.mark.parametrize("kind", KINDS)
def test_word_maps_are_renormalised_over_the_text_keys(pipes, kind):
    """tokens='all': every text key is stored, and each pixel's attention over them sums to 1
    (joint attention renormalised over the text keys; PixArt's masked T5 padding gets none)."""
    with diffviz.trace(pipes[kind], tokens="all", heads=True) as run:
        call(pipes[kind], kind, steps=2)
    tr = run.trace
    for maps in tr.attn.values():
        assert torch.allclose(maps.float().sum(2), torch.ones(()), atol=5e-3)
    if kind == "pixart":
        pad = [i for i, t in enumerate(tr.tokens) if t.text == "<pad>"]
        assert pad and all(float(m[:, :, pad].float().max()) == 0 for m in tr.attn.values())


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_softmax_over_all_keys_stores_each_words_raw_share(pipes, kind):
    """softmax_over="all": each map is the word's share of the softmax over image and text keys, i.e. the
    text-renormalised map times the pixel's text mass. Checked against a full softmax computed here from
    the layer's own query and keys, for the first joint layer at the first step."""
    from diffviz.capture import joint

    pipe, seen = pipes[kind], {}
    first = "transformer_blocks.0.attn"
    real_text_mass = joint.text_mass

    def spy(query, key_image, key_text, scale):  # the processor's q and k of the first layer and step
        if "q" not in seen:
            seen.update(q=query, ki=key_image, kt=key_text, scale=scale)
        return real_text_mass(query, key_image, key_text, scale)

    joint.text_mass = spy
    try:
        with diffviz.trace(pipe, tokens="all", heads=True, layers=first, softmax_over="all") as run:
            image = call(pipe, kind, steps=2)[0]
    finally:
        joint.text_mass = real_text_mass
    with diffviz.trace(pipe, tokens="all", heads=True, layers=first) as plain:
        call(pipe, kind, steps=2)
    raw, text = run.trace.attn[first][0].float(), plain.trace.attn[first][0].float()  # [head, token, h, w]
    q, ki, kt = (seen[k].float() for k in ("q", "ki", "kt"))
    full = (torch.cat([ki, kt], dim=-2) @ q.transpose(-1, -2) * seen["scale"]).softmax(-2)  # [b, h, key, q]
    want = full[-1, :, ki.shape[-2]:]  # the conditional image's text columns [head, text, query]
    assert torch.allclose(raw.flatten(-2), want, atol=2e-3)
    assert float(raw.sum(1).max()) < 1 and torch.allclose(raw / raw.sum(1, keepdim=True), text, atol=5e-3)
    assert np.array_equal(image, call(pipe, kind, steps=2)[0])  # observing did not change the image


def test_sd3_words_have_clip_and_t5_tokens_and_the_encoder_is_selectable(traces):
    tr = traces["sd3"][2]
    red = [t for t in tr.tokens if t.word == tr.words.index("red")]
    assert [(t.encoder, t.text) for t in red] == [("clip", "red</w>"), ("t5", "\u2581red")]
    assert red[0].position < 77 <= red[1].position  # T5 keys follow CLIP's 77
    clip, t5 = tr.word_heatmap("red", encoder="clip"), tr.word_heatmap("red", encoder="t5")
    assert not torch.equal(clip, t5)
    both = tr.heatmap("red", normalize=False)
    parts = sum(tr.heatmap("red", encoder=e, normalize=False) for e in ("clip", "t5"))
    assert torch.allclose(both, parts, atol=1e-6)  # a word's map sums its tokens over the encoders
    with pytest.raises(ValueError, match="encoder"):
        tr.word_heatmap("red", encoder="clip-g")


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_flow_matching_x0_is_latents_minus_sigma_times_velocity(traces, kind):
    tr = traces[kind][2]
    assert tr.scheduler["name"] == "FlowMatchEulerDiscreteScheduler"
    s = 1 / (1 + 1 / tr.sigma)  # the scheduler's sigma; trace.sigma is the noise-to-signal ratio (inf at s=1)
    assert float(s[0]) == 1.0 and bool((s[1:] < s[:-1]).all())
    assert torch.allclose(tr.alpha_bar, 1 / (1 + tr.sigma**2))  # sigma = sqrt((1 - alpha_bar) / alpha_bar)
    for i in range(tr.num_steps):
        want = tr.latents[i] - s[i] * tr.noise_guided[i]
        assert torch.allclose(tr.x0[i], want, atol=1e-5)
    assert torch.allclose(tr.x0[-1], tr.latents[-1], atol=1e-5)  # the last Euler step lands on x0
    assert tr.preview(0).shape == (64, 64, 3) and tr.preview(-1, of="latents").shape == (64, 64, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(traces, kind, tmp_path):
    tr = traces[kind][2]
    again = diffviz.load_trace(tr.save(tmp_path / f"{kind}.dvz"))
    assert again.tokens == tr.tokens and again.layers == tr.layers and again.words == tr.words
    assert again.model["family"] == kind
    for name in tr.attn:
        assert torch.equal(again.attn[name], tr.attn[name])
    assert torch.equal(again.x0, tr.x0) and torch.equal(again.image, tr.image)


@pytest.mark.parametrize("kind", KINDS)
def test_processors_are_restored_when_generation_raises(pipes, kind):
    trace_failing_mid_generation(pipes[kind], lambda: call(pipes[kind], kind, steps=2))


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_foreign_processor_is_refused_by_name(pipes, kind):
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe = pipes[kind]
    saved = dict(pipe.transformer.attn_processors)
    key = "transformer_blocks.0.attn.processor"
    pipe.transformer.set_attn_processor({**saved, key: AttnProcessor2_0()})
    try:
        refused = "transformer_blocks.0.attn.*AttnProcessor2_0, not diffusers'"
        with pytest.raises(diffviz.CaptureError, match=refused), diffviz.trace(pipe):
            call(pipe, kind, steps=2)
        kept = pipe.transformer.attn_processors[key]
        assert type(kept) is AttnProcessor2_0
    finally:
        pipe.transformer.set_attn_processor(saved)


def test_flux_true_cfg_is_refused_with_the_fix(pipes):
    with pytest.raises(diffviz.CaptureError, match="true_cfg_scale"), diffviz.trace(pipes["flux"]):
        call(pipes["flux"], "flux", steps=2, negative_prompt="a green square", true_cfg_scale=2.0)


def test_layer_selector_picks_flux_single_stream_blocks(pipes):
    with diffviz.trace(pipes["flux"], layers="single") as run:
        call(pipes["flux"], "flux", steps=2)
    assert [layer.label for layer in run.trace.layers] == ["single 0", "single 1"]


def call_kwargs(kind: str) -> dict:
    return {"flux": {"height": 64, "width": 64},
            "pixart": {"use_resolution_binning": False, "clean_caption": False}}.get(kind, {})


@pytest.mark.parametrize("kind", KINDS)
def test_reweight_by_one_changes_nothing_and_suppress_removes_the_word(pipes, traces, kind):
    pipe, kw = pipes[kind], call_kwargs(kind)
    image, _ = diffviz.edit.reweight(pipe, PROMPT, "red", 1.0, num_inference_steps=3, output_type="np", **kw)
    # joint attention: the edit moves the output by text_mass * (p_new - p) @ v, exactly 0; cross-attention
    # (PixArt) recomputes softmax(QK)V itself instead of the fused kernel: equal to float rounding
    if kind == "pixart":
        np.testing.assert_allclose(np.asarray(image), traces[kind][0], atol=1e-5)
    else:
        assert np.array_equal(np.asarray(image), traces[kind][0])
    image, tr = diffviz.edit.suppress(pipe, PROMPT, "red", num_inference_steps=3, output_type="np", **kw)
    assert not np.array_equal(np.asarray(image), traces[kind][0])
    red = tr.token_indices("red")
    assert all(float(m[:, :, red].float().max()) == 0 for m in tr.attn.values())
    assert all(type(p).__module__.startswith("diffusers.") for p in pipe.transformer.attn_processors.values())


@pytest.mark.parametrize("kind", KINDS)
def test_steer_and_inject_work_on_every_transformer_family(pipes, traces, kind):
    pipe, kw = pipes[kind], call_kwargs(kind)
    _, tr = diffviz.edit.steer(pipe, PROMPT, "red", (0, 0, 32, 32), num_inference_steps=3, output_type="np",
                               **kw)
    m = tr.word_heatmap("red")
    assert float(m[:32, :32].mean()) > 10 * float(m[32:, 32:].mean())  # the word's attention sits in the box
    source = traces[kind][2]  # same seed and size: inject keeps "red"'s layout from the source
    _, tr = diffviz.edit.inject(pipe, "a red square left of a blue square", source, "red",
                                num_inference_steps=3, output_type="np", **kw)
    red = tr.token_indices("red")
    for name, maps in tr.attn.items():
        want = source.attn[name][:, :, source.token_indices("red")].float().mean(1)
        assert torch.allclose(maps[:, :, red].float().mean(1), want, atol=2e-3)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_several_images_per_call_give_one_trace_each(pipes, kind):
    pipe = pipes[kind]
    before = call(pipe, kind, prompt=[PROMPT, "a blue square"], num_images_per_prompt=2, steps=2)
    with diffviz.trace(pipe) as run:
        images = call(pipe, kind, prompt=[PROMPT, "a blue square"], num_images_per_prompt=2, steps=2)
    assert np.array_equal(before, images)
    assert [t.words for t in run.traces] == [PROMPT.split()] * 2 + [["a", "blue", "square"]] * 2
    assert not torch.equal(run.traces[0].latents, run.traces[1].latents)  # two seeds' worth of noise


@pytest.mark.parametrize("kind", KINDS)
def test_attribution_rebuilds_the_traced_step_and_is_complete(pipes, traces, kind):
    """Integrated gradients over the token embeddings (SD3: CLIP-L, CLIP-G and T5; Flux, PixArt: T5):
    the rebuilt step predicts the traced x0, and the word scores add up to the change from the
    baseline (completeness)."""
    pipe, tr = pipes[kind], traces[kind][2]
    model = pipe_family(pipe).step_model(tr, 1, "x0")
    with torch.no_grad():
        model.prepare()
        pred = model.prediction(*model.encode(*model.ids))
    assert torch.allclose(pred[0], tr.x0[1], atol=1e-4)
    a = diffviz.attribute(pipe, tr, 1, word="red", n_steps=16)
    assert abs(float(a.word_scores.sum()) - a.total) < 1e-3 * abs(a.total) + abs(a.delta)
    assert a.pixel_map.shape == (64, 64)


@pytest.mark.parametrize("kind", KINDS)
def test_report_and_explorer_open_a_trace_of_each_family(traces, kind, tmp_path):
    from pathlib import Path

    from diffviz import heatmap

    tr = traces[kind][2]
    html = Path(diffviz.report(tr, tmp_path / f"{kind}.html")).read_text()
    assert PROMPT in html and "<script" in html
    app = diffviz.explore(tr, ["red"])
    blocks = {"sd3": ["joint blocks"], "flux": ["joint blocks", "single blocks"],
              "pixart": ["cross blocks"]}[kind]
    assert [label for label, _ in app.layers.options][1:1 + len(blocks)] == blocks
    want = heatmap.per_step(tr, tr.token_indices("red"), range(tr.num_steps), tr.layer_names()).numpy()
    heat = next(d for d in app.figure.data if type(d).__name__ == "Heatmap")
    np.testing.assert_allclose(np.asarray(heat.z), want[0], atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_self_attention_maps_for_a_chosen_pixel(pipes, traces, kind):
    """queries=: where a pixel looks in the image. PixArt has attn1 self-attention; in SD3 and Flux the
    joint layers' image rows over the image keys (renormalised over them, as word maps over the text)."""
    with diffviz.trace(pipes[kind], queries=[(10, 50), (0, 0, 32, 32)]) as run:
        image = call(pipes[kind], kind)[0]
    assert np.array_equal(image, traces[kind][0])
    tr = run.trace
    assert [l.name for l in tr.self_layers] == ([l.name for l in tr.layers] if kind != "pixart" else
                                               [f"transformer_blocks.{i}.attn1" for i in range(2)])
    for maps in tr.self_attn.values():  # [step, head, query, h, w]: each query's row sums to 1
        assert maps.shape[:3] == (3, 1, 2)
        assert torch.allclose(maps.float().sum((-2, -1)), torch.ones(()), atol=5e-3)
    m = tr.self_heatmap(0)
    assert m.shape == (64, 64) and float(m.max()) == 1.0
    assert not torch.equal(tr.self_heatmap(0), tr.self_heatmap(1))


def pipe_family(pipe):
    from diffviz.capture.families import family_of

    return family_of(pipe)


@pytest.mark.parametrize("kind", KINDS)
def test_words_stay_apart_with_a_whitespace_t5_tokenizer(kind):
    """A T5 tokenizer that splits on whitespace and marks no word start ("▁"): each word is its own word,
    read from the tokenizer's decoder, and its map is found by name (it merged into one word before)."""
    from diffviz.testing import t5_tokenizer

    pipe = tiny_pipeline(kind)
    pipe.set_progress_bar_config(disable=True)
    slot = {"sd3": "tokenizer_3", "flux": "tokenizer_2", "pixart": "tokenizer"}[kind]
    setattr(pipe, slot, t5_tokenizer(whitespace=True))
    assert "\u2581" not in "".join(getattr(pipe, slot).tokenize(PROMPT))
    with diffviz.trace(pipe) as run:
        call(pipe, kind, prompt=PROMPT + ", photo", steps=2)
    tr = run.trace
    t5_words = ["a", "red", "circle", "left", "of", "a", "blue", "square", ",", "photo"]
    assert tr.words == t5_words
    assert [t.text for t in tr.tokens if t.word == 1 and t.encoder in (None, "t5")] == ["red"]
    heat = tr.word_heatmap("red")
    assert heat.shape == (tr.height, tr.width) and float(heat.max()) == 1.0
    with pytest.raises(KeyError, match="photo"):
        tr.word_heatmap("crimson")


def test_flux_img2img_in_bfloat16_keeps_its_trace():
    """The denoiser sees Flux's timestep rounded to bfloat16; the trace still knows where the run starts
    (image-to-image begins part-way) and ends with the decoded image."""
    from diffusers import FluxImg2ImgPipeline
    from PIL import Image

    pipe = FluxImg2ImgPipeline(**tiny_pipeline("flux").components).to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    start = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    with diffviz.trace(pipe) as run:
        image = pipe(PROMPT, image=start, strength=0.5, num_inference_steps=8, height=64, width=64,
                     output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    tr = run.trace
    assert tr.num_steps == 4 and tr.image is not None and tr.image.shape == (64, 64, 3)
    assert np.abs(tr.image.float().numpy() / 255 - image).max() < 1 / 255 + 1e-3
    assert tr.word_heatmap("red").shape == (64, 64)


@pytest.mark.parametrize("kind", KINDS)
def test_edits_change_only_the_conditional_half_of_a_guided_batch(pipes, kind):
    """With classifier-free guidance the denoiser's batch is [unconditional, conditional]; an edit sees
    and changes the conditional rows only (PixArt keeps its guidance flag in a local, not on the pipe)."""
    from diffviz.capture.families import family_of
    from diffviz.edit import _generate

    seen = []

    def change(p, c):
        seen.append(p.shape[0])
        return p

    _generate(family_of(pipes[kind]), PROMPT, "red", change, steps=None, layers=None, seed=0,
              num_inference_steps=2, output_type="np", **call_kwargs(kind))
    assert seen and set(seen) == {1}  # one image: its conditional row, not both rows


def test_pixart_attribution_rebuilds_x0_as_a_clipping_scheduler_does():
    """PixArt's released scheduler configs clip x0 to [-1, 1] (clip_sample=True): the rebuilt step clips
    too, so attribution accepts the pipeline that made the trace."""
    from diffusers import DDIMScheduler

    pipe = tiny_pipeline("pixart")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True)
    with diffviz.trace(pipe) as run:
        call(pipe, "pixart")
    tr = run.trace
    assert float(tr.x0[1].abs().max()) == 1.0  # the scheduler did clip at this step
    a = diffviz.attribute(pipe, tr, 1, word="red", n_steps=8)
    assert abs(float(a.word_scores.sum()) - a.total) < 1e-3 * abs(a.total) + abs(a.delta)
