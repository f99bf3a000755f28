"""Joint-attention maths (diffviz.capture.joint) against the softmax over all keys computed whole, float64."""

import torch

from diffviz.capture import joint


def _qkv(b=2, h=3, n_img=20, n_text=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n_img + n_text, d, generator=g) for _ in range(3))
    return q[:, :, :n_img], k[:, :, :n_img], k[:, :, n_img:], v, n_img


def test_logsumexp_in_chunks_equals_whole():
    q, k_img, _, _, _ = _qkv()
    whole = (q.double() @ k_img.double().transpose(-1, -2) * 0.35).logsumexp(-1)
    for chunk in (1, 50, 10**9):  # one query row at a time, a few rows, everything at once
        assert torch.allclose(joint.logsumexp(q, k_img, 0.35, chunk=chunk).double(), whole, atol=1e-5)


def test_text_mass_and_renormalised_probs_are_the_full_softmax_columns():
    q, k_img, k_text, _, n_img = _qkv()
    full = (q.double() @ torch.cat([k_img, k_text], 2).double().transpose(-1, -2) * 0.35).softmax(-1)
    text_cols = full[..., n_img:]
    mass = joint.text_mass(q, k_img, k_text, 0.35)
    assert torch.allclose(mass.double(), text_cols.sum(-1), atol=1e-6)
    renorm = joint.text_scores(q, k_text, 0.35).softmax(-1)
    assert torch.allclose(renorm.double() * mass.double()[..., None], text_cols, atol=1e-6)


def test_edited_output_equals_attention_with_edited_text_columns():
    q, k_img, k_text, v, n_img = _qkv()
    scale = 0.35
    k = torch.cat([k_img, k_text], 2)
    full = (q.double() @ k.double().transpose(-1, -2) * scale).softmax(-1)
    out = (full @ v.double()).float()

    def edit(p):  # reweight text token 2 by 3, suppress token 4
        p = p.clone()
        p[..., 2] *= 3
        p[..., 4] = 0
        return p

    new_out, new_probs = joint.edited(out, q, k_img, k_text, v[:, :, n_img:], scale, edit)
    mass = full[..., n_img:].sum(-1, keepdim=True)
    want = full.clone()
    want[..., n_img:] = mass * edit(full[..., n_img:] / mass)
    assert torch.allclose(new_out.double(), want @ v.double(), atol=1e-5)
    assert torch.allclose(new_probs[..., 4], torch.zeros(()))
    same, _ = joint.edited(out, q, k_img, k_text, v[:, :, n_img:], scale, lambda p: p)
    assert torch.equal(same, out)  # an identity edit changes no bit
