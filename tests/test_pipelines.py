"""load_pipeline: a real checkpoint folder, saved here from a tiny pipeline, loads offline."""

from __future__ import annotations

import numpy as np
import pytest

import diffviz

from .conftest import generate


def test_load_a_saved_pipeline_and_trace_it(sd_pipe, tmp_path):
    sd_pipe.save_pretrained(tmp_path / "ckpt")
    pipe = diffviz.load_pipeline(tmp_path / "ckpt", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert np.array_equal(np.asarray(generate(pipe)), np.asarray(generate(sd_pipe)))
    with diffviz.trace(pipe) as tr:
        generate(pipe)
    assert tr.words == ["a", "red", "circle", "left", "of", "a", "blue", "square"]


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder.*model_index.json.*classroom"):
        diffviz.load_pipeline(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        diffviz.load_pipeline(tmp_path / "empty")


def test_no_path_follows_the_environment_switch(sd_pipe, tmp_path, monkeypatch):
    sd_pipe.save_pretrained(tmp_path / "ckpt")
    monkeypatch.setenv("DIFFVIZ_MODEL", str(tmp_path / "ckpt"))
    pipe = diffviz.load_pipeline(device="cpu")
    assert list(pipe.unet.config.block_out_channels) == list(sd_pipe.unet.config.block_out_channels)
    monkeypatch.setenv("DIFFVIZ_MODEL", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="no model folder"):
        diffviz.load_pipeline()
