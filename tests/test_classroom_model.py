"""The classroom model: loads offline from the package, generates, tells unknown words; training resumes."""

import json

import numpy as np
import pytest
import torch

from diffviz.classroom import IMAGE_SIZE, load_pipeline, model, train, unknown, vocabulary


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


OFFLINE_PROBE = """
import socket

def refuse(*args, **kwargs):
    raise OSError("network use while loading the classroom model")

socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
socket.getaddrinfo = refuse
from diffviz.classroom import load_pipeline
pipe = load_pipeline()
print(pipe("a red circle", num_inference_steps=2, output_type="np").images.shape)
"""


def test_shipped_model_loads_with_no_network_and_no_hub_cache(tmp_path):
    """A fresh process with the hub offline, an empty hub cache and every socket refused."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hub"))
    done = subprocess.run([sys.executable, "-c", OFFLINE_PROBE], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(f"(1, {IMAGE_SIZE}, {IMAGE_SIZE}, 3)")


def test_shipped_model_generates(pipe):
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
    """Stopping after 2 steps and resuming to 3 gives the very weights of 3 steps in one go."""
    from safetensors.torch import load_file

    args = ["--vae-steps", "2", "--vae-batch", "4", "--n-scenes", "24", "--batch", "4", "--threads", "1",
            "--device", "cpu", "--log-every", "1"]

    def run(name: str, steps: int) -> dict:
        train.main(args + ["--ckpt", str(tmp_path / name), "--weights", str(tmp_path / f"w_{name}"),
                           "--steps", str(steps)])
        return json.loads((tmp_path / name / "state" / "progress.json").read_text())

    assert run("resumed", 2)["step"] == 2
    assert run("resumed", 3)["step"] == 3
    assert run("straight", 3)["step"] == 3
    for part in ("params", "ema"):
        resumed = load_file(str(tmp_path / "resumed" / "state" / f"{part}.safetensors"))
        straight = load_file(str(tmp_path / "straight" / "state" / f"{part}.safetensors"))
        assert all(torch.equal(resumed[k], straight[k]) for k in straight), part
        initial = model.build_components(0)["unet"]
        assert not torch.equal(resumed["p0"], next(initial.parameters()).detach())  # it did train
    shipped = load_pipeline(tmp_path / "w_resumed")
    log = json.loads((tmp_path / "w_resumed" / "training_log.json").read_text())
    assert [row[0] for row in log["loss_curve"]] == [1, 2, 3] and log["image_size"] == model.TRAIN_SIZE
    assert shipped.unet.config.only_cross_attention
    assert shipped.unet.config.sample_size * shipped.vae_scale_factor == model.TRAIN_SIZE


def test_trainer_batches_are_a_function_of_seed_and_step():
    """A batch depends only on (seed, step): the shuffle is per epoch, the noise per step."""
    from types import SimpleNamespace

    tok = model.tokenizer()
    ids = tok(["a red circle", "a blue square above a green triangle"] * 8, padding="max_length",
              max_length=model.MAX_TOKENS, return_tensors="pt").input_ids.to(torch.int32)
    empty = tok([""], padding="max_length", max_length=model.MAX_TOKENS, return_tensors="pt").input_ids[0]
    latents = torch.randn(16, 4, 16, 16)
    targs = SimpleNamespace(seed=3, batch=6, lr=1e-4, warmup=1, precision="fp32", compile=False)

    def batch_at(step: int):
        tr = train.Trainer(targs, model.build_components(0), torch.device("cpu"), latents, ids, empty)
        tr.step = step
        return tr.batch()

    for a, b in zip(batch_at(5), batch_at(5)):
        assert torch.equal(a, b)
    assert not torch.equal(batch_at(5)[2], batch_at(6)[2])  # fresh noise every step
    x0, tokens, _, t = batch_at(2)  # step 2 of batch 6 over 16 scenes wraps into the second epoch
    assert x0.shape == (6, 4, 16, 16) and tokens.shape == (6, model.MAX_TOKENS) and t.shape == (6,)
    rows = [int(torch.nonzero((latents == x).all(dim=(1, 2, 3)))[0]) for x in x0]
    assert all(torch.equal(tokens[i], ids[r].long()) or torch.equal(tokens[i], empty.long())
               for i, r in enumerate(rows))  # each caption belongs to its latent (or is the dropped prompt)
