"""The family seam on the SD adapter: one layer selector everywhere, foreign processors kept, one
generation per trace (nested traces refused), an explicit run state, edits without host syncs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import diffviz
from diffviz import edit
from diffviz.capture import CaptureError, family_of, processors
from diffviz.select import select_layers
from diffviz.traces import Layer

from .conftest import PROMPT, generate
from .test_capture import assert_same, snapshot

KW = {"num_inference_steps": 4, "height": 64, "width": 64}


def test_layer_selector_matches_whole_parts_of_a_path():
    layers = [Layer(f"up_blocks.{i}.attentions.0.attn{a}", (8, 8) if i < 10 else (4, 4), 2, block="up")
              for i in (1, 10) for a in (1, 2)]
    layers.append(Layer("mid_block.attentions.0.attn2", (4, 4), 2, block="mid"))
    assert select_layers(layers, "up_blocks.1") == [layers[0].name, layers[1].name]
    assert select_layers(layers, "attn1") == [layers[0].name, layers[2].name]  # up_blocks.1 and .10
    assert select_layers(layers, "4x4") == [layers[2].name, layers[3].name, layers[4].name]
    assert select_layers(layers, ["mid", "up_blocks.10"]) == [layers[2].name, layers[3].name, layers[4].name]
    assert select_layers(layers, "up_blocks.1.attentions.0.attn2") == [layers[1].name]
    with pytest.raises(ValueError, match=r"matches 'up_blocks.2'.*\['up', 'mid'\].*'8x8', '4x4'"):
        select_layers(layers, "up_blocks.2")
    with pytest.raises(ValueError, match="matches 'attn'"):  # a part of a name is not a part of the path
        select_layers(layers, "attn")


def test_capture_heatmap_and_edits_select_the_same_layers(sd_pipe, traced):
    _, full = traced
    with diffviz.trace(sd_pipe, layers="16x16") as run:  # a resolution was refused by trace() before
        generate(sd_pipe)
    assert [l.name for l in run.layers] == full.layer_names("16x16") and run.layers
    seen: set[str] = set()
    with processors(sd_pipe, layers="16x16", edit=lambda layer, p: seen.add(layer) or p):
        generate(sd_pipe, steps=1)
    assert seen == set(full.layer_names("16x16"))
    _, edited = edit.suppress(sd_pipe, PROMPT, "red", layers="16x16", **KW)
    for l in edited.layers:
        late = edited.attn[l.name][:, :, edited.token_indices("red")].float()
        assert (late.abs().max() == 0) == (l.size == (16, 16))


def test_the_classroom_models_prompt_reading_attn1_is_captured_and_edited():
    from diffviz.classroom.model import assemble, build_components

    pipe = assemble(build_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": 2, "generator": torch.Generator().manual_seed(0)}
    with diffviz.trace(pipe) as run:
        pipe("a red circle", **kw)
    kinds = {l.name.rsplit(".", 1)[-1] for l in run.layers}
    assert kinds == {"attn1", "attn2"} and run.heatmap("red").shape == (run.height, run.width)
    assert next(l.title for l in run.layers if l.name.endswith("attn1")) == "first down block, attn1"
    seen: set[str] = set()
    with processors(pipe, edit=lambda layer, p: seen.add(layer) or p):
        pipe("a red circle", **kw)
    assert seen == {l.name for l in run.layers}


def test_a_nested_trace_is_refused_clearly(sd_pipe):
    before = snapshot(sd_pipe)
    with (pytest.raises(CaptureError, match="already being traced"), diffviz.trace(sd_pipe),
          diffviz.trace(sd_pipe)):
        generate(sd_pipe)
    assert_same(before, snapshot(sd_pipe))
    with pytest.raises(CaptureError, match="already being traced"), diffviz.trace(sd_pipe):
        edit.suppress(sd_pipe, PROMPT, "red", **KW)
    assert_same(before, snapshot(sd_pipe))


def test_the_run_has_an_explicit_state_and_no_placeholder_trace(sd_pipe):
    with diffviz.trace(sd_pipe) as run:
        assert run.state == "waiting"
        with pytest.raises(CaptureError, match="no generation has run"):
            run.height  # noqa: B018  (was a placeholder 0)
        generate(sd_pipe)
        assert run.state == "done" and run.trace.height == 64
    assert run.trace is run.traces[0] and run.words == PROMPT.split() and "4 steps" in repr(run)


class Louder:
    """A foreign processor that changes the layer's output (a stand-in for IP-Adapter or a custom one)
    and takes its own keyword argument through cross_attention_kwargs."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 boost: float = 1.0):
        return boost * self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


@pytest.mark.parametrize("kind", ["sliced", "custom"])
def test_foreign_processors_keep_their_effect(kind, traced):
    from diffusers.models.attention_processor import SlicedAttnProcessor

    from diffviz.testing import tiny_pipeline

    pipe = tiny_pipeline("sd")
    pipe.set_progress_bar_config(disable=True)
    default = np.asarray(generate(pipe))
    foreign = {k: (SlicedAttnProcessor(1) if kind == "sliced" else Louder()) if "attn2" in k else p
               for k, p in pipe.unet.attn_processors.items()}
    pipe.unet.set_attn_processor(foreign)
    extra = {} if kind == "sliced" else {"cross_attention_kwargs": {"boost": 1.5}}
    plain = np.asarray(generate(pipe, **extra))
    assert (kind == "sliced") == np.array_equal(plain, default)  # the custom one changes the image
    before = snapshot(pipe)
    with diffviz.trace(pipe) as run:
        image = np.asarray(generate(pipe, **extra))
    assert np.array_equal(image, plain)  # its effect stays, bitwise
    assert_same(before, snapshot(pipe))
    if kind == "sliced":  # same attention: the maps are those of the default processor
        ref = traced[1]
        for name in ref.attn:
            torch.testing.assert_close(run.attn[name].float(), ref.attn[name].float(), atol=2e-3, rtol=0)
    else:
        rows = run.attn[run.layers[0].name].float().sum(2)  # maps over the prompt's tokens: a share of 1
        assert (rows > 0).all() and (rows <= 1 + 1e-3).all()
        with pytest.raises(CaptureError, match="Louder.*drop its effect"):
            edit.suppress(pipe, PROMPT, "red", **KW)
        assert_same(before, snapshot(pipe))


def test_edits_do_not_read_values_back_during_the_generation(sd_pipe, monkeypatch):
    """A tensor -> Python conversion in diffviz's code (edits, processors, the recorder) is a GPU -> host
    sync; the few a generation needs happen once (at its start and end), none per layer and step: an edit
    of twice the steps makes no more of them."""
    package = str(Path(diffviz.__file__).parent)
    syncs: list[str] = []
    for name in ("__bool__", "item", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(package):
                syncs.append(f"{_name} in {Path(caller).name}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    counts = []
    for steps in (3, 6):
        syncs.clear()
        edit.steer(sd_pipe, PROMPT, "red", (0, 0, 32, 32), **(KW | {"num_inference_steps": steps}))
        edit.reweight(sd_pipe, PROMPT, "red", 2.0, **(KW | {"num_inference_steps": steps}))
        counts.append(sorted(syncs))
    assert counts[0] == counts[1], counts


def test_the_adapter_describes_the_sd_models(sd_pipe, sdxl_pipe):
    for pipe in (sd_pipe, sdxl_pipe):
        family = family_of(pipe)
        assert family.name == "sd" and family.default_size() == (64, 64)
        layers = family.layers((32, 32))
        assert {l.size for l in layers} == {(32, 32), (16, 16)}
        assert [l.block for l in layers] == sorted((l.block for l in layers), key=["down", "mid", "up"].index)
    with pytest.raises(TypeError, match="cannot trace a str.*Supported: StableDiffusionPipeline"):
        family_of("a pipeline")


def test_self_attention_of_chosen_pixels_only(sd_pipe, tmp_path):
    """queries=: each pixel's self-attention row, exactly (checked against the whole matrix computed here
    from the module's own weights), a box as the mean of its cells' rows; nothing else is stored."""
    plain = np.asarray(generate(sd_pipe))
    name = "up_blocks.1.attentions.1.transformer_blocks.0.attn1"  # 32x32 cells for the 64x64 image
    module = dict(sd_pipe.unet.named_modules())[name]
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        with diffviz.trace(sd_pipe, queries=[(21, 9), (0, 0, 32, 32)], heads=True) as run:
            image = np.asarray(generate(sd_pipe))
    finally:
        handle.remove()
    assert np.array_equal(image, plain)
    attn1 = [n.removesuffix(".processor") for n in sd_pipe.unet.attn_processors if "attn1" in n]
    assert sorted(l.name for l in run.self_layers) == sorted(attn1)  # SD's attn1 is self-attention
    assert [l.block for l in run.self_layers] == ["down", "down", "mid", "up", "up", "up", "up"]
    maps = run.self_attn[name]  # [step, head, query, h, w]
    assert maps.shape == (4, module.heads, 2, 32, 32)
    torch.testing.assert_close(maps.float().sum((-2, -1)), torch.ones(4, module.heads, 2), atol=2e-3, rtol=0)
    hidden = seen[-1][1:]  # the last step, conditional half: [1, cells, C]
    q = module.to_q(hidden).unflatten(-1, (module.heads, -1)).transpose(1, 2)
    k = module.to_k(hidden).unflatten(-1, (module.heads, -1)).transpose(1, 2)
    full = ((q @ k.transpose(-1, -2)) * module.scale).softmax(-1)[0]  # [head, 1024, 1024]
    torch.testing.assert_close(maps[-1, :, 0].float().flatten(1), full[:, 4 * 32 + 10], atol=1e-3, rtol=0)
    box = full.unflatten(1, (32, 32))[:, :16, :16].flatten(1, 2).mean(1)  # cells of pixels 0..31
    torch.testing.assert_close(maps[-1, :, 1].float().flatten(1), box, atol=1e-3, rtol=0)
    assert run.self_heatmap(0).shape == (64, 64) and run.self_heatmap(1, layers="32x32", heads=[0]).max() == 1
    est = diffviz.estimate_bytes(sd_pipe, 64, 64, 4, n_tokens=8, heads=True, queries=2)
    held = sum(m.numel() * m.element_size() for m in [*run.attn.values(), *run.self_attn.values()])
    assert est["attention"] == held
    again = diffviz.load_trace(run.save(tmp_path / "self.dvz"))
    assert again.queries == [[21.0, 9.0], [0.0, 0.0, 32.0, 32.0]] and again.self_layers == run.self_layers
    assert all(torch.equal(again.self_attn[n], run.self_attn[n]) for n in run.self_attn)


def test_self_attention_queries_are_checked(sd_pipe):
    from diffviz.classroom.model import assemble, build_components

    with pytest.raises(ValueError, match=r"pixels \(x, y\) or boxes"):
        diffviz.trace(sd_pipe, queries=[(1, 2, 3)]).__enter__()
    with (pytest.raises(CaptureError, match="outside the 64x64 image"),
          diffviz.trace(sd_pipe, queries=[(64, 0)])):
        generate(sd_pipe)
    with (pytest.raises(CaptureError, match="no self-attention"),
          diffviz.trace(assemble(build_components(seed=0)), queries=[(0, 0)])):
        pass
    with diffviz.trace(sd_pipe) as run:
        generate(sd_pipe, steps=1)
    with pytest.raises(ValueError, match="queries="):
        run.self_heatmap()


def test_each_image_keeps_its_own_unconditional_rows(sd_pipe):
    kw = {"num_inference_steps": 2, "height": 64, "width": 64}
    with diffviz.trace(sd_pipe, uncond=True, queries=[(8, 8)]) as run:
        sd_pipe([PROMPT, "a blue square"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw)
    with diffviz.trace(sd_pipe, uncond=True, queries=[(8, 8)]) as alone:
        sd_pipe("a blue square", generator=torch.Generator().manual_seed(1), **kw)
    for store in ("attn", "attn_uncond", "self_attn"):
        mine, ref = getattr(run[1], store), getattr(alone, store)
        assert mine.keys() == ref.keys() and ref
        for name in ref:
            torch.testing.assert_close(mine[name].float(), ref[name].float(), atol=1e-3, rtol=0)
    name = alone.layers[0].name  # image 0 (other noise) has other unconditional maps at position 1
    first = [r.attn_uncond[name][:, :, 0].float() for r in run]
    assert not torch.allclose(first[0], first[1], atol=1e-3)
