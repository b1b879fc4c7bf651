"""Whole models with backend 'triton' (the interpreter on CPU) reproduce the original's fixtures."""
import argparse

import pytest
import torch

from conftest import KERNEL_DEVICE as DEVICE, assert_close, load_fixture, require_triton

require_triton()

from videogpt_fast.backends import use_backend  # noqa: E402
from videogpt_fast.gpt import VideoGPT  # noqa: E402
from videogpt_fast.vqvae import VQVAE  # noqa: E402


def _vqvae():
    ref = load_fixture("vqvae.pt")
    model = VQVAE(argparse.Namespace(**ref["args"]))
    model.load_state_dict(ref["state_dict"])
    return model.to(DEVICE).eval(), ref


def test_vqvae_triton_backend_matches_fixture():
    model, ref = _vqvae()
    with use_backend("triton"), torch.no_grad():
        recon_loss, x_recon, vq = model(ref["x"].to(DEVICE))
        decoded = model.decode(ref["encodings"].to(DEVICE))
    assert torch.equal(vq["encodings"].cpu(), ref["encodings"])
    assert_close(x_recon.cpu(), ref["x_recon"])
    assert_close(recon_loss.cpu(), ref["recon_loss"])
    assert_close(decoded.cpu(), ref["decoded"])


def test_vqvae_triton_backend_gradients_match_torch():
    model, ref = _vqvae()
    model.train()
    model.codebook._need_init = False
    x = ref["x"][:1].to(DEVICE)
    grads = {}
    for backend in ("torch", "triton"):
        model.zero_grad()
        state = {k: v.clone() for k, v in model.codebook.state_dict().items()}
        with use_backend(backend):
            recon_loss, _, vq = model(x)
            (recon_loss + vq["commitment_loss"]).backward()
        model.codebook.load_state_dict(state)
        model.codebook._need_init = False
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name, g in grads["torch"].items():
        torch.testing.assert_close(grads["triton"][name], g, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", ["gpt_sparse", "gpt_full"])
def test_gpt_triton_backend_matches_decode_logits(name):
    vq, _ = _vqvae()
    ref = load_fixture(f"{name}.pt")
    model = VideoGPT(argparse.Namespace(**ref["args"]), vqvae=vq)
    model.load_state_dict(ref["state_dict"])
    model = model.to(DEVICE).eval()
    targets = ref["targets"].to(DEVICE)
    with use_backend("triton"), torch.no_grad():
        emb = model.vqvae.codebook.dictionary_lookup(targets)
        _, logits = model(emb, targets, {})
    assert_close(logits.reshape(logits.shape[0], -1, logits.shape[-1]).cpu(), ref["decode_logits"])


@pytest.mark.parametrize("attn_type", ["sparse", "full"])
def test_sampling_decode_triton_backend_matches_torch(attn_type):
    """The static-cache decoder with decode attention in the Triton block-sparse decode kernel
    (dense models through an all-ones layout) gives the torch backend's logits at every position.
    (Small model: every step is an interpreted kernel launch on CPU.)"""
    from videogpt_fast import sample as S
    torch.manual_seed(0)
    vq = VQVAE(argparse.Namespace(embedding_dim=8, n_codes=16, n_hiddens=8, n_res_layers=0,
                                  downsample=[2, 4, 4], sequence_length=4, resolution=32))  # latent 2x8x8
    model = VideoGPT(dict(vqvae="unused", n_cond_frames=0, class_cond=False, hidden_dim=24, heads=2, layers=1,
                          dropout=0.0, attn_type=attn_type, attn_dropout=0.0), vqvae=vq)
    with torch.no_grad():
        model.fc_out.weight.normal_(std=0.3)
    model = model.to(DEVICE).eval()
    codes = torch.randint(0, 16, (2, *vq.latent_shape), device=DEVICE)
    with use_backend("torch"):
        expected = S.teacher_forced_decode(model, codes)
    with use_backend("triton"):
        got = S.teacher_forced_decode(model, codes)
    assert_close(got, expected)
