"""Tracing text-to-video pipelines: tiny Wan 2.1 and CogVideoX built from config (diffviz.testing) get the
image families' guarantees (the same video, the pipeline restored, honest byte estimates, files that
round-trip) and a frame axis: latents, x0 and maps per latent frame, a word map per frame, figures, the
explorer and the report on frames."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import diffviz
from diffviz import edit, heatmap, io
from diffviz.capture import CaptureError
from diffviz.course import lesson11
from diffviz.summary import summarize
from diffviz.testing import tiny_pipeline

from .conftest import printed_answer, trace_failing_mid_generation

PROMPT = "a red ball jumps left of a blue square"
KINDS = ["wan", "cogvideox"]
FRAMES, SIDE, STEPS = 9, 64, 3  # 9 frames -> 3 latent frames of 8x8 cells -> 3x4x4 video tokens


@pytest.fixture(scope="module")
def pipes():
    made = {}
    for kind in KINDS:
        made[kind] = tiny_pipeline(kind)
        made[kind].set_progress_bar_config(disable=True)
    return made


def call(pipe, prompt: str = PROMPT, steps: int = STEPS, **kw) -> np.ndarray:
    """[frame, H, W, 3] floats in [0, 1]: the pipeline's video."""
    kw = dict(height=SIDE, width=SIDE, num_frames=FRAMES, max_sequence_length=16, guidance_scale=5.0) | kw
    return pipe(prompt, num_inference_steps=steps, output_type="np",
                generator=torch.Generator().manual_seed(0), **kw).frames[0]


@pytest.fixture(scope="module")
def traces(pipes):
    """(untraced video made first, traced video, trace) per family."""
    out = {}
    for kind, pipe in pipes.items():
        before = call(pipe)
        with diffviz.trace(pipe) as run:
            video = call(pipe)
        out[kind] = (before, video, run.trace)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_traced_video_is_bitwise_the_untraced_one_and_the_pipeline_is_restored(pipes, traces, kind):
    before, video, tr = traces[kind]
    assert np.array_equal(before, video)
    pipe = pipes[kind]
    assert all(type(p).__module__.startswith("diffusers.") for p in pipe.transformer.attn_processors.values())
    assert "decode" not in vars(pipe.vae) and "step" not in vars(pipe.scheduler)
    # the trace keeps the whole video, as the pipeline returned it
    assert tr.image.shape == (FRAMES, SIDE, SIDE, 3) and tr.image.dtype == torch.uint8
    assert np.abs(tr.image.numpy() / 255 - video).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_axes_have_a_frame_axis_before_h_w_and_the_estimate_matches(pipes, traces, kind):
    tr = traces[kind][2]
    c = pipes[kind].transformer.config.in_channels
    assert tr.is_video and tr.num_frames == 3 and tr.temporal_compression == 4
    assert tuple(tr.latents.shape) == (STEPS + 1, c, 3, 8, 8)
    for x in (tr.x0, tr.noise_cond, tr.noise_uncond):
        assert tuple(x.shape) == (STEPS, c, 3, 8, 8)
    assert tr.words == PROMPT.split()
    for layer in tr.layers:
        assert layer.size == (3, 4, 4) and layer.resolution == "4x4" and layer.frames == 3
        assert tuple(tr.attn[layer.name].shape) == (STEPS, 1, len(tr.tokens), 3, 4, 4)
    est = diffviz.estimate_bytes(pipes[kind], SIDE, SIDE, STEPS, len(tr.tokens), num_frames=FRAMES)
    assert est["video"] == tr.image.numel()
    assert 0 <= tr.nbytes - est["total"] < 1024  # the schedule and the preview map: a few hundred bytes


@pytest.mark.parametrize("kind", KINDS)
def test_maps_are_the_modules_own_attention_laid_out_frame_major(pipes, traces, kind):
    """The first layer's map at the first step, recomputed from the module's inputs and weights and laid out
    as the transformer unpatchifies its tokens (frame, h, w)."""
    pipe, tr = pipes[kind], traces[kind][2]
    name = tr.layers[0].name
    module = pipe.transformer.get_submodule(name)
    seen = []
    handle = module.register_forward_pre_hook(lambda m, a, kw: seen.append((a, kw)), with_kwargs=True)
    try:
        call(pipe)
    finally:
        handle.remove()
    args, kw = seen[0]  # the first call of the first step: the conditional branch (Wan) or [uncond, cond]
    hidden = kw.get("hidden_states", args[0] if args else None)
    text = kw.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    if kind == "wan":
        q = module.norm_q(module.to_q(hidden))[-1].unflatten(-1, (module.heads, -1)).transpose(0, 1)
        k = module.norm_k(module.to_k(text))[-1].unflatten(-1, (module.heads, -1)).transpose(0, 1)
    else:  # joint: text keys first; the maps renormalise the video rows over them
        q = module.norm_q(module.to_q(hidden)[-1].unflatten(-1, (module.heads, -1)).transpose(0, 1))
        k = module.norm_k(module.to_k(text)[-1].unflatten(-1, (module.heads, -1)).transpose(0, 1))
    probs = ((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])).softmax(-1).mean(0)  # [video token, text]
    positions = [t.position for t in tr.tokens]
    want = probs[:, positions].T.reshape(len(positions), 3, 4, 4)
    torch.testing.assert_close(tr.attn[name][0, 0].float(), want, atol=2e-3, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_word_heatmap_is_one_map_per_latent_frame_normalised_over_the_video(traces, kind):
    tr = traces[kind][2]
    raw = tr.word_heatmap("jumps", normalize=False)
    heat = tr.word_heatmap("jumps")
    assert tuple(heat.shape) == (3, SIDE, SIDE)
    torch.testing.assert_close(heat, (raw - raw.min()) / (raw.max() - raw.min()))
    assert float(heat.max()) == 1.0 and float(heat.min()) == 0.0
    assert sum(float(heat[k].max()) == 1.0 for k in range(3)) == 1  # not normalised per frame
    # one frame of the video is an image trace whose maps are that frame's
    frame = tr.frame(2)
    assert not frame.is_video and frame.layers[0].size == (4, 4)
    torch.testing.assert_close(frame.word_heatmap("jumps", normalize=False), raw[2])
    assert torch.equal(frame.image, tr.image[8]) and torch.equal(frame.x0, tr.x0[:, :, 2])
    assert tuple(frame.preview(0).shape) == (SIDE, SIDE, 3)
    # the word's attention mass over time: [step, word], as for images
    assert tuple(heatmap.word_mass(tr).shape) == (STEPS, len(tr.words))


def test_latent_and_output_frames_map_both_ways(traces):
    tr = traces["wan"][2]
    assert [list(tr.output_frames_of(k)) for k in range(3)] == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert [tr.latent_frame_of(f) for f in range(FRAMES)] == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    with pytest.raises(IndexError, match="0..2"):
        tr.output_frames_of(3)
    with pytest.raises(IndexError, match="0..8"):
        tr.latent_frame_of(9)
    image = traces["wan"][2].frame(0)
    with pytest.raises(ValueError, match="picks a frame of a video"):
        image.frame(0)


def test_lesson11_printed_solution_passes_its_check(traces, capsys):
    tr = traces["wan"][2]
    for frame in range(FRAMES):
        answer = printed_answer(lesson11.solution, "latent_frame", capsys, tr=tr, FRAME=frame)
        assert lesson11.check_latent_frame(answer, tr, frame), frame
    assert not lesson11.check_latent_frame((1, [1, 2, 3]), tr, 2)  # a latent frame holds 4 output frames
    with pytest.raises(ValueError, match="no solution named"):
        lesson11.solution("frame")


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_and_version_2_files_still_open(traces, kind, tmp_path):
    tr = traces[kind][2]
    path = tr.save(tmp_path / "v.dvz")
    again = diffviz.load_trace(path)
    assert again.is_video and again.layers == tr.layers and torch.equal(again.image, tr.image)
    for name in tr.attn:
        assert torch.equal(again.attn[name], tr.attn[name])
    torch.testing.assert_close(again.word_heatmap("ball"), tr.word_heatmap("ball"))
    # a file written before videos (format version 2) opens
    image_trace = traces[kind][2].frame(0)
    old = image_trace.save(tmp_path / "old.dvz")
    with safe_open(str(old), framework="pt") as f:
        meta = json.loads(f.metadata()["diffviz"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta.pop("sha256")
    io.write_file(old, tensors, meta | {"format_version": 2})
    assert diffviz.load_trace(old).word_heatmap("ball").shape == (SIDE, SIDE)
    io.write_file(old, tensors, meta | {"format_version": 99})
    with pytest.raises(io.TraceFileError, match="reads version 2 or 3"):
        diffviz.load_trace(old)


@pytest.mark.parametrize("kind", KINDS)
def test_processors_and_decode_are_restored_when_generation_raises(pipes, kind):
    trace_failing_mid_generation(pipes[kind], lambda: call(pipes[kind], steps=2))


def test_what_video_families_cannot_do_yet_is_refused_with_the_fix(pipes, traces):
    with pytest.raises(CaptureError, match="call of its own. Trace without uncond="), \
            diffviz.trace(pipes["wan"], uncond=True):
        call(pipes["wan"], steps=1)
    for kind in KINDS:
        with pytest.raises(CaptureError, match="edits are not available"):
            edit.suppress(pipes[kind], PROMPT, "ball", num_inference_steps=1, height=SIDE, width=SIDE,
                                  num_frames=FRAMES, max_sequence_length=16)
    with pytest.raises(ValueError, match=r"summarize\(trace.frame\(k\)\)"):
        summarize(traces["wan"][2])
    with pytest.raises(NotImplementedError, match="attribution is not available for wan"):
        diffviz.attribute(pipes["wan"], traces["wan"][2], 0)
    with pytest.raises(ValueError, match="a video.s latents are normalised per model"):
        traces["wan"][2].decode(0, vae=pipes["wan"].vae)


def test_wan_22_with_two_experts_is_refused_by_name(pipes):
    pipe = pipes["wan"]
    pipe.register_modules(transformer_2=pipe.transformer)
    try:
        with pytest.raises(CaptureError, match="two experts"):
            diffviz.trace(pipe).__enter__()
    finally:
        pipe.register_modules(transformer_2=None)


@pytest.mark.parametrize("kind", KINDS)
def test_figures_report_and_explorer_show_frames(traces, kind, tmp_path):
    from diffviz.viz import figures

    tr = traces[kind][2]
    fig = figures.word_heatmap(tr, "jumps")
    assert len(fig.frames) == 3 and fig.layout.sliders[0].currentvalue.prefix == "latent frame "
    heat = tr.word_heatmap("jumps", size=(4, 4))
    np.testing.assert_allclose(np.asarray(fig.frames[2].data[1].z), heat[2].numpy(), atol=1e-6)
    strip = figures.word_frames(tr, "jumps")
    assert [a.text for a in strip.layout.annotations] == ["frame 0 (video 0)", "frame 1 (video 1-4)",
                                                          "frame 2 (video 5-8)"]
    html = Path(diffviz.report(tr, tmp_path / "v.html")).read_text()
    assert "Which frames “jumps” shaped" in html and "latent frame 1 of 3" in html
    app = diffviz.explore(tr, ["jumps"])
    assert app.frame.max == 2 and app.frame.value == 1 and app.frame.layout.display != "none"
    final = app.figure.data[2].source
    app.frame.value = 2  # the panels move to another frame: its final frame and its maps
    assert app.figure.data[2].source != final and app.trace.options["frame"] == 2
    want = heatmap.per_step(tr.frame(2), tr.token_indices("jumps"), range(STEPS), tr.layer_names()).numpy()
    shown = next(d for d in app.figure.data if type(d).__name__ == "Heatmap")
    np.testing.assert_allclose(np.asarray(shown.z), want[app.step.value], atol=1e-6)


def test_a_video_checkpoint_folder_loads_offline_and_traces(pipes, traces, tmp_path):
    pipes["wan"].save_pretrained(tmp_path / "wan")
    pipe = diffviz.load_pipeline(tmp_path / "wan", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    before = call(pipe)
    with diffviz.trace(pipe) as run:
        video = call(pipe)
    assert np.array_equal(video, before)
    # the same weights (loaded as diffusers lays them out: float rounding apart) make the same video
    np.testing.assert_allclose(video, traces["wan"][1], atol=1e-4)
    assert run.trace.model["family"] == "wan" and run.trace.model["pipeline"] == "WanPipeline"
    torch.testing.assert_close(run.trace.word_heatmap("ball"), traces["wan"][2].word_heatmap("ball"),
                               atol=1e-3, rtol=0)
