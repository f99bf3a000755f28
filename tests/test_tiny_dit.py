"""The tiny diffusion-transformer pipelines and T5 tokenizer of diffviz.testing (built from config,
offline)."""

import numpy as np
import pytest
import torch

from diffviz.testing import WORDS, t5_tokenizer, tiny_pipeline


def test_t5_tokenizer_keeps_known_words_whole_and_splits_others():
    tok = t5_tokenizer(model_max_length=16)
    ids = tok("a red Zebra", padding="max_length", max_length=12, truncation=True).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[:2] == ["\u2581a", "\u2581red"]  # one piece each, with SentencePiece's word-start mark
    assert pieces[2:8] == ["\u2581", "Z", "e", "b", "r", "a"]  # unknown and case-sensitive: characters
    assert pieces[8] == "</s>" and set(pieces[9:]) == {"<pad>"}
    assert (tok.eos_token_id, tok.pad_token_id) == (1, 0)
    assert all(len(tok(w).input_ids) == 2 for w in WORDS)  # each listed word + </s>


@pytest.mark.parametrize("kind", ["sd3", "flux", "pixart", "pixart-sigma"])
def test_tiny_dit_pipelines_are_built_the_same_from_a_seed_and_differ_across_seeds(kind):
    """The tests compare traced and untraced images of these pipelines, so a build must be reproducible:
    two builds from one seed draw the same image, a build from another seed a different one."""
    kw = {"height": 64, "width": 64} if kind == "flux" else {}
    if kind.startswith("pixart"):
        kw |= {"use_resolution_binning": False, "clean_caption": False}

    def run(seed: int) -> np.ndarray:
        pipe = tiny_pipeline(kind, seed=seed)
        pipe.set_progress_bar_config(disable=True)
        return pipe("a red circle left of a blue square", num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0), **kw).images[0]

    a, b, other = run(0), run(0), run(1)
    assert a.shape == (64, 64, 3) and np.isfinite(a).all() and a.std() > 0
    assert np.array_equal(a, b)
    assert np.abs(a - other).mean() > 1e-3
