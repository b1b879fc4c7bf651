"""Whole models with backend 'triton' (the interpreter on CPU) reproduce the original's fixtures."""
import argparse

import pytest
import torch

from conftest import KERNEL_DEVICE as DEVICE, assert_close, load_fixture, require_triton

require_triton()

from videogpt_fast.backends import use_backend  # noqa: E402
from videogpt_fast.gpt import VideoGPT  # noqa: E402
from videogpt_fast.kernels import axial_attention as ax  # noqa: E402
from videogpt_fast.kernels import blocksparse_attention as bsa  # noqa: E402
from videogpt_fast.kernels import codebook as cb  # noqa: E402
from videogpt_fast.vqvae import VQVAE  # noqa: E402


def _spy(monkeypatch, module, name):
    """Count the calls of the kernel launcher ``module.name`` (ops looks it up at call time)."""
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _gpt_fixture(name):
    vq, _ = _vqvae()
    ref = load_fixture(f"{name}.pt")
    model = VideoGPT(argparse.Namespace(**ref["args"]), vqvae=vq)
    model.load_state_dict(ref["state_dict"])
    return model.to(DEVICE).eval(), ref


def _vqvae():
    ref = load_fixture("vqvae.pt")
    model = VQVAE(argparse.Namespace(**ref["args"]))
    model.load_state_dict(ref["state_dict"])
    return model.to(DEVICE).eval(), ref


def test_vqvae_triton_backend_matches_fixture(monkeypatch):
    model, ref = _vqvae()
    codebook_calls = _spy(monkeypatch, cb, "codebook_nearest")
    axial_calls = _spy(monkeypatch, ax, "axial_attention")
    with use_backend("triton"), torch.no_grad():
        recon_loss, x_recon, vq = model(ref["x"].to(DEVICE))
        decoded = model.decode(ref["encodings"].to(DEVICE))
    assert torch.equal(vq["encodings"].cpu(), ref["encodings"])
    assert_close(x_recon.cpu(), ref["x_recon"])
    assert_close(recon_loss.cpu(), ref["recon_loss"])
    assert_close(decoded.cpu(), ref["decoded"])
    assert len(codebook_calls) == 1, "the Triton codebook kernel did not run"
    assert len(axial_calls) > 0 and len(axial_calls) % 3 == 0, "the Triton axial kernel did not run (3 axes)"


def test_vqvae_triton_backend_gradients_match_torch(monkeypatch):
    model, ref = _vqvae()
    stats_calls = _spy(monkeypatch, cb, "codebook_nearest_with_stats")
    axial_calls = _spy(monkeypatch, ax, "axial_attention")
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
        if backend == "torch":
            assert not stats_calls and not axial_calls, "backend torch ran a Triton kernel"
    assert len(stats_calls) == 1 and len(axial_calls) > 0, "backend triton did not run the Triton kernels"
    for name, g in grads["torch"].items():
        torch.testing.assert_close(grads["triton"][name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_gpt_sparse_triton_forward_matches_decode_logits(monkeypatch):
    """The sparse GPT's teacher-forced forward with its block-sparse attention in the Triton kernel
    (one launch per layer) reproduces the original's decoding logits. (gpt_full's forward has no
    Triton op, full attention is PyTorch SDPA: its Triton path is the decode test below.)"""
    model, ref = _gpt_fixture("gpt_sparse")
    calls = _spy(monkeypatch, bsa, "blocksparse_attention")
    targets = ref["targets"].to(DEVICE)
    with use_backend("triton"), torch.no_grad():
        emb = model.vqvae.codebook.dictionary_lookup(targets)
        _, logits = model(emb, targets, {})
    assert len(calls) == ref["args"]["layers"], "the Triton block-sparse kernel did not run in every layer"
    assert_close(logits.reshape(logits.shape[0], -1, logits.shape[-1]).cpu(), ref["decode_logits"])


@pytest.mark.parametrize("name", ["gpt_full", "gpt_sparse"])
def test_gpt_triton_decode_matches_decode_logits(monkeypatch, name):
    """Decode steps of the fixture GPTs under backend triton: ops.decode_attention runs the Triton
    block-sparse decode kernel (gpt_full through an all-ones layout) in every layer and step, and
    the logits are the original's decoding logits. First 12 positions only: every step is a few
    interpreted kernel launches."""
    from videogpt_fast import sample as S
    model, ref = _gpt_fixture(name)
    calls = _spy(monkeypatch, bsa, "blocksparse_decode_attention_unchecked")  # what ops runs
    positions = 12
    flat = ref["targets"].reshape(ref["targets"].shape[0], -1).to(DEVICE)
    with use_backend("triton"), torch.no_grad():
        plan = S.DecodePlan.from_model(model, flat.shape[0])
        logits = []
        for i in range(positions):
            plan.pos.fill_(i)
            if i > 0:
                plan.prev.copy_(flat[:, i - 1])
            logits.append(S.decode_step(plan, plan.prev, plan.pos).float().clone())
    assert len(calls) == positions * ref["args"]["layers"], "the Triton decode kernel did not run every step"
    assert_close(torch.stack(logits, 1).cpu(), ref["decode_logits"][:, :positions])


@pytest.mark.parametrize("attn_type", ["sparse", "full"])
def test_sampling_decode_triton_backend_matches_torch(monkeypatch, attn_type):
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
    calls = _spy(monkeypatch, bsa, "blocksparse_decode_attention_unchecked")  # what ops runs
    with use_backend("triton"):
        got = S.teacher_forced_decode(model, codes)
    assert len(calls) == codes[0].numel(), "the Triton decode kernel did not run at every position"
    assert_close(got, expected)
