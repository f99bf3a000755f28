"""The classroom model: loads offline from the package, generates, tells unknown words; training resumes."""

import json

import numpy as np
import pytest
import torch

from diffviz.classroom import IMAGE_SIZE, load_pipeline, unknown, vocabulary
from diffviz.classroom import model, train


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


def test_shipped_model_loads_offline_and_generates(pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pipe.device.type == "cpu"
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size * 4 == IMAGE_SIZE
    assert pipe.text_encoder.config.num_hidden_layers == 0
    out = pipe("a red circle left of a green triangle", num_inference_steps=3,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(out).all()


def test_shipped_weights_are_small_safetensors():
    files = [p for p in model.WEIGHTS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")]
    assert any(p.suffix == ".safetensors" for p in files)


def test_vocabulary_and_unknown_words(pipe):
    vocab = vocabulary()
    assert {"red", "circle", "left", "of", "above"} <= set(vocab)
    assert unknown(pipe, "a red circle") == []
    assert unknown(pipe, "a crimson circle beside a square") == ["crimson", "beside"]
    # an unknown word still generates, like any Stable Diffusion model
    pipe("a crimson circle", num_inference_steps=2, output_type="np")


def test_missing_weights_error_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffviz.classroom.train"):
        load_pipeline(tmp_path)


def test_training_is_seeded_and_resumable(tmp_path):
    args = ["--ckpt", str(tmp_path / "ck"), "--weights", str(tmp_path / "w"), "--vae-steps", "2",
            "--vae-batch", "4", "--n-scenes", "24", "--batch", "4", "--threads", "1", "--device", "cpu"]
    train.main(args + ["--steps", "2"])
    first = json.loads((tmp_path / "ck" / "state" / "progress.json").read_text())
    assert first["step"] == 2
    train.main(args + ["--steps", "3"])
    assert json.loads((tmp_path / "ck" / "state" / "progress.json").read_text())["step"] == 3
    shipped = load_pipeline(tmp_path / "w")
    assert (tmp_path / "w" / "training_log.json").exists()
    assert shipped.unet.config.only_cross_attention
