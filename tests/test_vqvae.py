"""VQVAE: the original's state dict and numbers, other configurations, training, validation."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, load_fixture
from videogpt_fast.utils import shift_dim
from videogpt_fast.vqvae import (VQVAE, AxialBlock, Decoder, Encoder, SamePadConv3d,
                                 SamePadConvTranspose3d)


def _args(**kw) -> argparse.Namespace:
    base = dict(embedding_dim=8, n_codes=16, n_hiddens=8, n_res_layers=1, downsample=(2, 4, 4),
                sequence_length=4, resolution=16)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(scope="module")
def fixture_model():
    fx = load_fixture("vqvae.pt")
    model = VQVAE(fx["args"])
    model.load_state_dict(fx["state_dict"], strict=True)
    return model.eval(), fx


# ----------------------------------------------------------------------------------------------
def test_state_dict_keys_equal_original(fixture_model):
    model, fx = fixture_model
    ours = model.state_dict()
    assert list(ours) == list(fx["state_dict"])
    for k, v in fx["state_dict"].items():
        assert ours[k].shape == v.shape and ours[k].dtype == v.dtype, k
    assert not model.codebook._need_init
    assert tuple(model.latent_shape) == tuple(fx["latent_shape"])
    assert model.embedding_dim == fx["args"]["embedding_dim"] and model.n_codes == fx["args"]["n_codes"]
    assert isinstance(model.args, argparse.Namespace)


def test_fixture_outputs(fixture_model):
    model, fx = fixture_model
    with torch.no_grad():
        codes, emb = model.encode(fx["x"], include_embeddings=True)
        assert torch.equal(codes, fx["encodings"])
        assert torch.equal(model.encode(fx["x"]), fx["encodings"])
        assert_close(emb, fx["embeddings"])
        assert_close(model.decode(fx["encodings"]), fx["decoded"])
        recon_loss, x_recon, vq = model(fx["x"])
    assert_close(recon_loss, fx["recon_loss"])
    assert_close(x_recon, fx["x_recon"])
    assert_close(vq["commitment_loss"], fx["commitment_loss"])
    assert_close(vq["perplexity"], fx["perplexity"])
    assert torch.equal(vq["encodings"], fx["encodings"])


def test_compute_loss_matches_the_original_numbers(fixture_model):
    """compute_loss is the original training_step's loss: recon_loss + commitment_loss (eval mode)."""
    model, fx = fixture_model
    with torch.no_grad():
        loss, metrics = model.compute_loss(fx["x"])
    assert set(metrics) == {"recon_loss", "commitment_loss", "perplexity"}
    assert_close(metrics["recon_loss"], fx["recon_loss"])
    assert_close(metrics["commitment_loss"], fx["commitment_loss"])
    assert_close(metrics["perplexity"], fx["perplexity"])
    assert_close(loss, fx["recon_loss"] + fx["commitment_loss"])


@pytest.mark.parametrize("x_shape", [(2, 3, 4, 16, 16), (3, 3, 8, 16, 32)])
def test_compute_loss_equals_the_hand_written_loss(x_shape):
    """Training mode (codebook init, then an EMA step): the loss, its gradients, the metrics and the
    updated codebook equal the loss the trainer used to write by hand (recon_loss + commitment_loss)."""
    x = torch.rand(*x_shape) - 0.5
    res = {}
    for how in ("hand", "method"):
        torch.manual_seed(3)
        model = VQVAE(_args()).train()
        for _ in range(2):  # the first step initialises the codebook, the second updates its EMA
            model.zero_grad()
            if how == "hand":
                recon_loss, _, vq = model(x)
                loss = recon_loss + vq["commitment_loss"]
                metrics = {"recon_loss": recon_loss, "commitment_loss": vq["commitment_loss"],
                           "perplexity": vq["perplexity"]}
            else:
                loss, metrics = model.compute_loss(x)
            loss.backward()
        res[how] = (loss.detach(), {k: v.detach() for k, v in metrics.items()},
                    {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                    {n: b.clone() for n, b in model.codebook.named_buffers()})
    (l0, m0, g0, b0), (l1, m1, g1, b1) = res["hand"], res["method"]
    assert torch.isfinite(l0) and torch.equal(l0, l1)
    assert m0.keys() == m1.keys() and all(torch.equal(m0[k], m1[k]) for k in m0)
    assert not any(v.requires_grad for v in m1.values())  # logged values, not part of the graph
    assert g0.keys() == g1.keys() and len(g0) > 10 and all(torch.equal(g0[n], g1[n]) for n in g0)
    assert all(torch.equal(b0[n], b1[n]) for n in b0)


def test_compute_loss_rejects_bad_videos():
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        VQVAE(_args()).compute_loss(torch.rand(2, 4, 4, 16, 16))


def test_axial_block_equals_unfused_attention_modules(fixture_model):
    model, _ = fixture_model
    block = model.encoder.res_stack[0].block[8]
    assert isinstance(block, AxialBlock)
    x = torch.randn(2, 48, 3, 4, 5)
    h = shift_dim(x, 1, -1)
    ref = shift_dim(block.attn_w(h, h, h) + block.attn_h(h, h, h) + block.attn_t(h, h, h), -1, 1)
    with torch.no_grad():
        assert_close(block(x), ref.detach())


@pytest.mark.parametrize("k,s", [(4, (2, 2, 2)), (4, (1, 2, 2)), (3, 1), (1, 1), (4, 1), (2, 2), (4, (4, 2, 1))])
def test_same_pad_convs_equal_explicit_padding(k, s):
    """The GPU path (padding inside the convolution) equals the original's explicit padding."""
    conv = SamePadConv3d(5, 6, k, stride=s)
    convt = SamePadConvTranspose3d(5, 6, k, stride=s)
    x = torch.randn(2, 5, 4, 8, 8)
    with torch.no_grad():
        ref, y = conv.conv(F.pad(x, conv.pad_input)), convt.convt(F.pad(x, convt.pad_input))
        assert_close(conv(x), ref)
        assert_close(convt(x), y)
        for m, r in ((conv, ref), (convt, y)):
            if m.pad_input[::2] == m.pad_input[1::2] and min(m.pad_input) >= 0 and (
                    m is conv or m._convt_padding is not None):
                assert_close(m.forward_builtin_padding(x), r)
            else:
                with pytest.raises(ValueError):
                    m.forward_builtin_padding(x)
    stride = (s,) * 3 if isinstance(s, int) else s
    if all(st == 1 or (st == 2 and k == 4) for st in stride):  # where the original's sizes are "same"
        assert y.shape[2:] == tuple(n * st for n, st in zip(x.shape[2:], stride))


@pytest.mark.parametrize("k,s", [(4, (2, 2, 2)), (4, (1, 2, 2)), (3, 1), (4, 1), (2, 2)])
def test_replicate_temporal_padding_equals_explicit_padding(k, s):
    """temporal_padding="replicate" (TATS): time padded with copies of the edge frames, height and
    width with zeros, on fresh float64 inputs of odd sizes; "zeros" is the original's padding."""
    x = torch.randn(2, 5, 6, 7, 9, dtype=torch.float64)
    for cls, inner in ((SamePadConv3d, "conv"), (SamePadConvTranspose3d, "convt")):
        m = cls(5, 3, k, stride=s, temporal_padding="replicate").double()
        w0, w1, h0, h1, t0, t1 = m.pad_input
        frames = [x[:, :, :1]] * t0 + [x] + [x[:, :, -1:]] * t1
        padded = F.pad(torch.cat(frames, dim=2), (w0, w1, h0, h1, 0, 0))
        with torch.no_grad():
            torch.testing.assert_close(m(x), getattr(m, inner)(padded), rtol=0, atol=0)
            zeros = cls(5, 3, k, stride=s).double()
            zeros.load_state_dict(m.state_dict())
            torch.testing.assert_close(zeros(x), getattr(m, inner)(F.pad(x, m.pad_input)), rtol=0, atol=0)


def test_replicate_padding_makes_a_still_video_s_latents_the_same_in_time():
    """Time-agnostic codes: with replicate padding every latent frame of a still video is the same
    (no frame knows where in the clip it is); with the original's zeros the clip's edges differ.
    Unknown paddings are an error. (The decoder keeps edge effects: a transposed convolution's
    outermost outputs get no contribution from beyond its input, whatever the input padding.)"""
    x = (torch.rand(2, 3, 1, 16, 16) - 0.5).expand(-1, -1, 8, -1, -1)
    for padding in ("replicate", "zeros"):
        torch.manual_seed(0)
        vq = VQVAE(_args(sequence_length=8, temporal_padding=padding)).eval()
        assert vq.temporal_padding == padding
        with torch.no_grad():
            z = vq._latents(x)                       # (B, D, t, h, w), t = 4
            same = all(torch.allclose(z[:, :, i], z[:, :, 0], atol=1e-5) for i in range(z.shape[2]))
            assert same == (padding == "replicate")
            if padding == "replicate":
                codes = vq.encode(x)
                assert all(torch.equal(codes[:, i], codes[:, 0]) for i in range(codes.shape[1]))
    assert VQVAE(_args()).temporal_padding == "zeros"  # the original's args lack it
    with pytest.raises(ValueError, match="temporal_padding must be one of"):
        VQVAE(_args(temporal_padding="reflect"))


@pytest.mark.parametrize("bad", ["", 0, 123, "REPLICATE", "reflect", False])
def test_bad_temporal_padding_is_an_error_at_every_level(bad):
    """A bad temporal_padding is a ValueError naming the constraint: in VQVAE (only an absent or None
    value means the original's zeros; "" or 0 is no silent fallback) and in the convolutions, the
    encoder and decoder built directly (which would otherwise pad any value but "zeros" as replicate)."""
    with pytest.raises(ValueError, match="temporal_padding must be one of"):
        VQVAE(_args(temporal_padding=bad))
    for build in (lambda: SamePadConv3d(2, 2, 3, temporal_padding=bad),
                  lambda: SamePadConvTranspose3d(2, 2, 4, stride=2, temporal_padding=bad),
                  lambda: Encoder(8, 1, (2, 4, 4), bad), lambda: Decoder(8, 1, (2, 4, 4), bad)):
        with pytest.raises(ValueError, match="temporal_padding must be one of"):
            build()
    assert VQVAE(_args(temporal_padding=None)).temporal_padding == "zeros"


def test_cpu_bf16_training_gradients_finite():
    """Regression: torch's CPU bf16 convolution backward with built-in padding returned NaN/1e36
    weight gradients at random (torch 2.13); on CPU the layers pad explicitly, as the original."""
    torch.manual_seed(0)
    model = VQVAE(_args(n_hiddens=16, downsample=(2, 2, 2))).train()
    x = torch.rand(2, 3, 4, 16, 16) - 0.5
    for _ in range(40):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            recon_loss, _, vq = model(x)
        (recon_loss + 0.25 * vq["commitment_loss"]).backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, bad


@pytest.mark.parametrize("cfg,x_shape,latent", [
    (dict(downsample=(2, 4, 4), sequence_length=4, resolution=16), (2, 3, 4, 16, 16), (2, 4, 4)),
    (dict(downsample=(1, 2, 2), sequence_length=3, resolution=8, n_hiddens=6, embedding_dim=5, n_codes=7),
     (1, 3, 3, 8, 8), (3, 4, 4)),
    (dict(downsample=[4, 4, 4], sequence_length=8, resolution=8, n_res_layers=0, n_codes=3),
     (2, 3, 8, 8, 8), (2, 2, 2)),
    (dict(downsample=(8, 1, 2), sequence_length=8, resolution=4, n_hiddens=10, embedding_dim=3),
     (1, 3, 8, 4, 4), (1, 4, 2)),
])
def test_other_configs_shapes_and_consistency(cfg, x_shape, latent):
    model = VQVAE(_args(**cfg))
    assert model.latent_shape == latent
    x = torch.rand(*x_shape) - 0.5
    with torch.no_grad():
        model.eval()
        model.codebook.train()
        model(x)  # data-dependent codebook init from eval-mode latents
        model.codebook.eval()
        codes, emb = model.encode(x, include_embeddings=True)
        assert codes.shape == (x_shape[0], *latent) and codes.dtype == torch.int64
        assert emb.shape == (x_shape[0], model.embedding_dim, *latent)
        assert int(codes.min()) >= 0 and int(codes.max()) < model.n_codes
        assert_close(emb, model.codebook.dictionary_lookup(codes).movedim(-1, 1))
        if model.n_codes > 3:
            assert len(codes.unique()) > 1
        decoded = model.decode(codes)
        assert decoded.shape == x.shape
        recon_loss, x_recon, vq = model(x)
    assert torch.equal(vq["encodings"], codes)
    assert_close(x_recon, decoded)
    assert_close(recon_loss, F.mse_loss(decoded, x) / 0.06)
    assert_close(model.decode(codes.int()), decoded)
    # the codes of a decoded video decode to the same video as re-encoding it says they should
    with torch.no_grad():
        codes2 = model.encode(decoded)
        assert_close(model.decode(codes2), model(decoded)[1])


def test_dict_args_and_parser_defaults():
    parser = VQVAE.add_model_specific_args(argparse.ArgumentParser(add_help=False))
    defaults = parser.parse_args([])
    assert (defaults.embedding_dim, defaults.n_codes, defaults.n_hiddens, defaults.n_res_layers,
            tuple(defaults.downsample)) == (256, 2048, 240, 4, (4, 4, 4))
    parsed = parser.parse_args(["--downsample", "2", "4", "4", "--n_codes", "16"])
    assert parsed.downsample == [2, 4, 4] and parsed.n_codes == 16
    d = vars(_args())
    a, b = VQVAE(d), VQVAE(_args())
    assert isinstance(a.args, argparse.Namespace) and vars(a.args) == d
    assert list(a.state_dict()) == list(b.state_dict())


def test_training_forward_backward_straight_through():
    torch.manual_seed(0)
    model = VQVAE(_args()).train()
    assert model.codebook._need_init
    x = torch.rand(2, 3, 4, 16, 16) - 0.5
    recon_loss, x_recon, vq = model(x)
    assert not model.codebook._need_init  # data-dependent init on the first training batch
    # reconstruction loss alone reaches the encoder only through the straight-through estimator
    recon_loss.backward()
    for p in (model.encoder.convs[0].conv.weight, model.pre_vq_conv.conv.weight,
              model.encoder.res_stack[0].block[8].attn_t.w_qs.weight, model.decoder.convts[-1].convt.bias):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    model.zero_grad()
    _, _, vq = model(x)
    vq["commitment_loss"].backward()
    assert model.encoder.convs[0].conv.weight.grad.abs().sum() > 0
    assert model.decoder.convts[-1].convt.bias.grad is None or model.decoder.convts[-1].convt.bias.grad.abs().sum() == 0
    assert all(not b.requires_grad for b in model.codebook.buffers())


def test_loaded_model_codebook_not_reinitialised():
    src = VQVAE(_args()).train()
    x = torch.rand(2, 3, 4, 16, 16) - 0.5
    with torch.no_grad():
        src(x)  # initialise + one EMA step
    dst = VQVAE(_args())
    dst.load_state_dict(src.state_dict(), strict=True)
    assert not dst.codebook._need_init
    dst.train()
    n_before = dst.codebook.N.clone()
    with torch.no_grad():
        _, _, vq = dst(x)
    counts = torch.bincount(vq["encodings"].flatten(), minlength=dst.n_codes).float()
    assert_close(dst.codebook.N, 0.99 * n_before + 0.01 * counts)


def test_validation_errors():
    model = VQVAE(_args()).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model.encode(torch.randn(3, 4, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(1, 1, 4, 16, 16))
    with pytest.raises(ValueError, match="divisible by downsample"):
        model.encode(torch.randn(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="divisible by downsample"):
        model(torch.randn(1, 3, 4, 16, 18))
    with pytest.raises(ValueError, match="int64/int32 codes"):
        model.decode(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="int64/int32 codes"):
        model.decode(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="powers of two"):
        VQVAE(_args(downsample=(3, 4, 4)))
    with pytest.raises(ValueError, match="powers of two"):
        VQVAE(_args(downsample=(0, 4, 4)))
    with pytest.raises(ValueError, match="3 entries"):
        VQVAE(_args(downsample=(4, 4)))
    with pytest.raises(ValueError, match="at least one factor > 1"):
        VQVAE(_args(downsample=(1, 1, 1)))
    with pytest.raises(ValueError, match="n_hiddens must be even"):
        VQVAE(_args(n_hiddens=7))
    with pytest.raises(ValueError, match="sequence_length and resolution .* divisible by downsample"):
        VQVAE(_args(resolution=18))
    with pytest.raises(ValueError, match="sequence_length and resolution .* divisible by downsample"):
        VQVAE(_args(sequence_length=5))
    with pytest.raises(ValueError, match="missing 'n_codes'"):
        VQVAE(dict(embedding_dim=4, n_hiddens=4, n_res_layers=1, downsample=(2, 2, 2)))
    no_shape = VQVAE(dict(embedding_dim=4, n_codes=4, n_hiddens=4, n_res_layers=1, downsample=(2, 2, 2)))
    with pytest.raises(ValueError, match="latent_shape needs"):
        no_shape.latent_shape
    with pytest.raises(ValueError, match="powers of two"):
        Encoder(8, 1, (4, 6, 4))
    with pytest.raises(ValueError, match="powers of two"):
        Decoder(8, 1, (4, 4, 5))
    with pytest.raises(ValueError, match="n_head"):
        AxialBlock(9, 2)


# ----------------------------------------------------------------------------------------------
# issue 15 follow-up attacks: wrong dtypes, devices, empty batches and out-of-range codes are clear
# ValueErrors, not errors from deep in torch (a code >= n_codes is a device-side assert on CUDA)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda x: (x * 255 + 128).to(torch.uint8), r"float videos in \[-0\.5, 0\.5\], got torch\.uint8.*preprocess"),
    (lambda x: x.double(), r"videos are torch\.float64 but the VQVAE's weights are torch\.float32"),
    (lambda x: x.half(), r"videos are torch\.float16 but the VQVAE's weights are torch\.float32"),
    (lambda x: x[:0], r"non-empty batch"),
    (lambda x: x[:, :, :0], r"T, H, W >= 1, got shape \(2, 3, 0, 8, 8\)"),  # was a conv "kernel size" error
    (lambda x: x[:, :, :, :, :0], r"T, H, W >= 1, got shape \(2, 3, 4, 8, 0\)"),
    (lambda x: x.to("meta"), r"videos are on meta but the VQVAE is on cpu"),
    (lambda x: x.numpy(), r"torch\.Tensor \(B, 3, T, H, W\), got ndarray"),
])
def test_bad_videos_are_clear_errors(make, match):
    vq = VQVAE(_args(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=1, downsample=[2, 2, 2]))
    x = torch.rand(2, 3, 4, 8, 8) - 0.5
    with pytest.raises(ValueError, match=match):
        vq.encode(make(x))
    with pytest.raises(ValueError, match=match):
        vq(make(x))


def test_float16_videos_are_fine_under_autocast():
    vq = VQVAE(_args(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=1, downsample=[2, 2, 2]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert vq.encode((torch.rand(1, 3, 4, 8, 8) - 0.5).bfloat16()).shape == (1, 2, 4, 4)


@pytest.mark.parametrize("fill", [-1, 8, 99])
def test_decode_rejects_codes_outside_the_codebook(fill):
    vq = VQVAE(_args(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=1, downsample=[2, 2, 2]))
    codes = torch.zeros(2, 2, 4, 4, dtype=torch.long)
    codes[1, 1, 2, 3] = fill
    with pytest.raises(ValueError, match=rf"codes in \[0, n_codes=8\), got values in \[{min(fill, 0)}, {max(fill, 0)}\]"):
        vq.decode(codes)
    assert vq.decode(codes.clamp(0, 7)).shape == (2, 3, 4, 8, 8)
