"""VideoGPT prior and its ResNet frame encoder against the original's golden outputs.

The fixture priors (gpt_full / gpt_sparse / gpt_cond) sit on the VQ-VAE of ``vqvae.pt``; their
``targets`` are that VQ-VAE's codes of ``vqvae.pt['x']``, and ``gpt_cond``'s frame conditioning is
the first two frames of that same ``x`` (the fixture stores only ``label``; the loss matches the
original's exactly with these frames).
"""
from __future__ import annotations

import argparse
import itertools
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close, load_fixture
from videogpt_fast.gpt import VideoGPT
from videogpt_fast.resnet import Conv3d, ResNet, resnet34
from videogpt_fast.utils import shift_dim
from videogpt_fast.vqvae import VQVAE

NAMES = ("gpt_full", "gpt_sparse", "gpt_cond")
TINY_VQVAE = dict(embedding_dim=8, n_codes=16, n_hiddens=16, n_res_layers=1, downsample=[1, 4, 4],
                  sequence_length=4, resolution=32)  # latent (4, 8, 8): 256 positions, 8 blocks of 32


def tiny_args(**kw) -> dict:
    args = dict(vqvae="unused", n_cond_frames=0, class_cond=False, class_cond_dim=None, hidden_dim=24,
                heads=4, layers=2, dropout=0.0, attn_type="full", attn_dropout=0.0, resolution=32,
                sequence_length=4)
    args.update(kw)
    return args


def tiny_vqvae(**kw) -> VQVAE:
    return VQVAE({**TINY_VQVAE, **kw}).eval()


# ----------------------------------------------------------------------------------------------
# fixtures: each 140 MB / 3 MB prior is built once per module
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vq_ref():
    return load_fixture("vqvae.pt")


def _fixture_vqvae(vq_ref) -> VQVAE:
    model = VQVAE(vq_ref["args"])
    model.load_state_dict(vq_ref["state_dict"], strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def priors(vq_ref):
    """name -> (fixture dict, VideoGPT loaded from it with strict=True, load result)."""
    out = {}
    for name in NAMES:
        ref = load_fixture(f"{name}.pt")
        model = VideoGPT(ref["args"], vqvae=_fixture_vqvae(vq_ref))
        result = model.load_state_dict(ref["state_dict"], strict=True)
        out[name] = (ref, model.eval(), result)
    return out


def fixture_inputs(name, ref, vq_ref):
    """(embeddings BTHWC, targets, cond, batch) for a fixture prior."""
    targets = ref["targets"]
    emb = F.embedding(targets, ref["state_dict"]["vqvae.codebook.embeddings"])
    batch = {"video": vq_ref["x"]}
    cond = {}
    if ref["args"]["class_cond"]:
        batch["label"] = ref["label"]
        cond["class_cond"] = F.one_hot(ref["label"], ref["args"]["class_cond_dim"]).float()
    if ref["args"]["n_cond_frames"] > 0:
        cond["frame_cond"] = vq_ref["x"][:, :, :ref["args"]["n_cond_frames"]]
    return emb, targets, cond, batch


def decode_step_by_step(model: VideoGPT, emb, targets, cond) -> torch.Tensor:
    """Logits of every position through the KV-cache decode path, fed as the original's sampling
    loop feeds it: the embedding of the previous position (arbitrary at step 0). (B, seq, n_codes)."""
    b = emb.shape[0]
    out, prev = [], None
    with torch.no_grad():
        for i, idx in enumerate(itertools.product(*[range(s) for s in model.shape])):
            cur = (slice(None), *[slice(j, j + 1) for j in idx])
            src = cur if prev is None else prev
            logits = model(emb[src], targets[cur], cond, decode_step=i, decode_idx=idx)[1]
            out.append(logits.reshape(b, -1))
            prev = cur
    return torch.stack(out, dim=1)


# ----------------------------------------------------------------------------------------------
# fixture parity
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_strict_load_and_state_dict_round_trip(priors, name):
    ref, model, result = priors[name]
    assert not result.missing_keys and not result.unexpected_keys
    sd = model.state_dict()
    assert list(sd) == list(ref["state_dict"])  # same keys, same order, masks included
    for key, value in ref["state_dict"].items():
        assert torch.equal(sd[key].cpu(), value), key
    mask_keys = [k for k in sd if k.endswith("attn.attn.mask")]
    assert len(mask_keys) == (0 if name == "gpt_sparse" else ref["args"]["layers"])


@pytest.mark.parametrize("name", ["gpt_full", "gpt_cond"])
def test_teacher_forced_matches_original(priors, vq_ref, name):
    ref, model, _ = priors[name]
    emb, targets, cond, _ = fixture_inputs(name, ref, vq_ref)
    cond_before = dict(cond)
    with torch.no_grad():
        loss, logits = model(emb, targets, cond)
    assert_close(logits, ref["logits"])
    assert_close(loss, ref["loss"])
    assert cond.keys() == cond_before.keys() and all(cond[k] is cond_before[k] for k in cond)  # not mutated


@pytest.mark.parametrize("name", NAMES)
def test_decode_path_matches_original(priors, vq_ref, name):
    ref, model, _ = priors[name]
    emb, targets, cond, _ = fixture_inputs(name, ref, vq_ref)
    assert_close(decode_step_by_step(model, emb, targets, cond), ref["decode_logits"])


def test_sparse_block_forward_matches_decode_logits(priors, vq_ref):
    """The teacher-forced block-sparse forward equals the original's dense-masked decoding at
    every position (the original computes the former only through DeepSpeed)."""
    ref, model, _ = priors["gpt_sparse"]
    emb, targets, cond, _ = fixture_inputs("gpt_sparse", ref, vq_ref)
    with torch.no_grad():
        loss, logits = model(emb, targets, cond)
    expected = ref["decode_logits"]
    assert_close(logits.flatten(1, -2), expected)
    assert_close(loss, F.cross_entropy(expected.transpose(1, 2), targets.flatten(1)))


@pytest.mark.parametrize("name", NAMES)
def test_compute_loss_from_batch(priors, vq_ref, name):
    """The training-step path (VQ-VAE encode, cond from the batch) reproduces the fixture loss."""
    ref, model, _ = priors[name]
    _, targets, _, batch = fixture_inputs(name, ref, vq_ref)
    with torch.no_grad():
        loss = model.compute_loss(batch)
    expected = ref["loss"] if "loss" in ref else F.cross_entropy(ref["decode_logits"].transpose(1, 2),
                                                                 targets.flatten(1))
    assert_close(loss, expected)


def test_conditioning_is_used(priors, vq_ref):
    ref, model, _ = priors["gpt_cond"]
    emb, targets, cond, _ = fixture_inputs("gpt_cond", ref, vq_ref)
    with torch.no_grad():
        base = model(emb, targets, cond)[1]
        other_label = dict(cond, class_cond=F.one_hot(ref["label"] + 2, 5).float())
        other_frames = dict(cond, frame_cond=cond["frame_cond"].flip(0))
        assert not torch.allclose(model(emb, targets, other_label)[1], base, atol=1e-4)
        assert not torch.allclose(model(emb, targets, other_frames)[1], base, atol=1e-4)
    with pytest.raises(ValueError, match="label"):
        model.make_cond({"video": vq_ref["x"]})


def test_resnet_matches_fixture_names_and_shape(priors, vq_ref):
    ref, model, _ = priors["gpt_cond"]
    resnet_keys = [k[len("resnet."):] for k in ref["state_dict"] if k.startswith("resnet.")]
    assert list(resnet34(1, (1, 4, 4), resnet_dim=240).state_dict()) == resnet_keys
    with torch.no_grad():
        feats = model.resnet(vq_ref["x"][:, :, :2])
    assert feats.shape == (2, 2, 8, 8, 240) and feats.is_contiguous()


def test_lightning_checkpoint_loads(vq_ref):
    ref = load_fixture("gpt_full.pt")
    path = load_fixture("gpt_full_lightning.ckpt")
    model = VideoGPT.load_from_checkpoint(str(path), vqvae=_fixture_vqvae(vq_ref))
    assert isinstance(model, VideoGPT) and not model.training
    emb, targets, cond, _ = fixture_inputs("gpt_full", ref, vq_ref)
    with torch.no_grad():
        assert_close(model(emb, targets, cond)[1], ref["logits"])


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------
def original_sample_loop(model: VideoGPT, n: int, cond: dict) -> torch.Tensor:
    """The original's ``sample`` loop, literally (whole-grid dictionary lookups, squeeze)."""
    samples = torch.zeros((n,) + model.shape).long()
    prev_idx = None
    with torch.no_grad():
        for i, idx in enumerate(itertools.product(*[range(s) for s in model.shape])):
            batch_idx_slice = (slice(None, None), *[slice(j, j + 1) for j in idx])
            batch_idx = (slice(None, None), *idx)
            embeddings = model.vqvae.codebook.dictionary_lookup(samples)
            src = batch_idx_slice if prev_idx is None else prev_idx
            logits = model(embeddings[src], samples[src], dict(cond), decode_step=i, decode_idx=idx)[1]
            logits = logits.squeeze().unsqueeze(0) if logits.shape[0] == 1 else logits.squeeze()
            samples[batch_idx] = torch.multinomial(F.softmax(logits, dim=-1), 1).squeeze(-1)
            prev_idx = batch_idx_slice
        return torch.clamp(model.vqvae.decode(samples), -0.5, 0.5) + 0.5


def _randomize_head(model: VideoGPT) -> None:
    # fc_out starts at zero (uniform predictions): give it weights so that sampling depends on them
    with torch.no_grad():
        model.fc_out.weight.normal_(std=0.5)


@pytest.mark.parametrize("n", [1, 3])
def test_sample_shape_range_and_original_loop(n):
    vq = tiny_vqvae(sequence_length=2, resolution=16)  # latent (2, 4, 4)
    model = VideoGPT(tiny_args(resolution=16, sequence_length=2), vqvae=vq).eval()
    _randomize_head(model)
    torch.manual_seed(1)
    samples = model.sample(n)
    assert samples.shape == (n, 3, 2, 16, 16)
    assert samples.min() >= 0 and samples.max() <= 1
    assert model.decode_batch() is None
    assert all(net.attn.kv_cache is None for net in model.attn_stack.attn_nets)  # caches freed
    torch.manual_seed(1)
    assert torch.equal(samples, original_sample_loop(model, n, {}))


def test_conditional_sample():
    vq = tiny_vqvae(sequence_length=4, resolution=8)  # latent (4, 2, 2); frame features (1, 2, 2)
    model = VideoGPT(tiny_args(resolution=8, n_cond_frames=1, class_cond=True, class_cond_dim=3), vqvae=vq).eval()
    _randomize_head(model)
    batch = {"video": torch.rand(2, 3, 4, 8, 8) - 0.5, "label": torch.tensor([0, 2])}
    torch.manual_seed(3)
    samples = model.sample(2, batch)
    assert samples.shape == (2, 3, 4, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    torch.manual_seed(3)
    assert torch.equal(samples, original_sample_loop(model, 2, model.make_cond(batch)))
    with pytest.raises(ValueError, match="batch"):
        model.sample(2)
    with pytest.raises(ValueError, match="n=3"):
        model.sample(3, batch)


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn_type", ["full", "sparse"])
def test_dropout_training_backward(attn_type):
    vq = tiny_vqvae()
    model = VideoGPT(tiny_args(attn_type=attn_type, dropout=0.2, attn_dropout=0.3), vqvae=vq)
    model.train()
    assert model.training and not model.vqvae.training
    assert not any(p.requires_grad for p in model.vqvae.parameters())
    assert model.vqvae.codebook._need_init is False
    batch = {"video": torch.rand(2, 3, 4, 32, 32) - 0.5}
    torch.manual_seed(0)
    loss_a = model.compute_loss(batch)
    loss_a.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith("vqvae.") for n, _ in trainable)
    for name, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.fc_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vqvae.parameters())
    # dropout is live in train mode and off in eval mode
    with torch.no_grad():
        _randomize_head(model)
        torch.manual_seed(1)
        a = model.compute_loss(batch)
        torch.manual_seed(2)
        b = model.compute_loss(batch)
        assert not torch.equal(a, b)
        model.eval()
        assert torch.equal(model.compute_loss(batch), model.compute_loss(batch))


# ----------------------------------------------------------------------------------------------
# construction
# ----------------------------------------------------------------------------------------------
def test_args_namespace_dict_and_parser():
    vq = tiny_vqvae()
    a = VideoGPT(tiny_args(), vqvae=vq)
    b = VideoGPT(argparse.Namespace(**tiny_args()), vqvae=vq)
    assert list(a.state_dict()) == list(b.state_dict())
    assert a.hparams["args"].hidden_dim == 24
    parser = VideoGPT.add_model_specific_args(argparse.ArgumentParser())
    defaults = vars(parser.parse_args([]))
    assert defaults == dict(vqvae="kinetics_stride4x4x4", n_cond_frames=0, class_cond=False, hidden_dim=576,
                            heads=4, layers=8, dropout=0.2, attn_type="full", attn_dropout=0.3)
    parsed = parser.parse_args(["--class_cond", "--attn_type", "sparse"])
    assert parsed.class_cond is True and parsed.attn_type == "sparse"
    # the parser's namespace has no class_cond_dim: fine while class_cond is False
    args = argparse.Namespace(**{**defaults, "hidden_dim": 24, "layers": 1})
    assert VideoGPT(args, vqvae=vq).args.class_cond_dim is None


@pytest.mark.parametrize("kw, match", [
    (dict(class_cond=True, class_cond_dim=None), "class_cond_dim"),
    (dict(class_cond=False, class_cond_dim=4), "class_cond_dim"),
    (dict(hidden_dim=30, heads=4), "divisible by heads"),
    (dict(hidden_dim=20, heads=4), "number of latent dims"),
    (dict(attn_type="axial"), "attn_type"),
    (dict(n_cond_frames=1, resolution=30), "resolution divisible by 4"),
    (dict(n_cond_frames=1, heads=7, hidden_dim=42), "240"),
])
def test_invalid_args(kw, match):
    with pytest.raises(ValueError, match=match):
        VideoGPT(tiny_args(**kw), vqvae=tiny_vqvae())


def test_invalid_args_structure():
    args = tiny_args()
    del args["heads"]
    with pytest.raises(ValueError, match="heads"):
        VideoGPT(args, vqvae=tiny_vqvae())
    with pytest.raises(ValueError, match="block size 32"):  # latent (2, 4, 2): 16 positions
        VideoGPT(tiny_args(attn_type="sparse"), vqvae=tiny_vqvae(sequence_length=2, resolution=16,
                                                                downsample=[1, 4, 8]))
    with pytest.raises(TypeError):
        VideoGPT([("hidden_dim", 24)], vqvae=tiny_vqvae())


def test_loading_keeps_codebook_initialised():
    vq = tiny_vqvae()
    model = VideoGPT(tiny_args(), vqvae=vq)
    sd = model.state_dict()
    sd["vqvae.codebook.N"] = torch.zeros_like(sd["vqvae.codebook.N"])  # an "untrained" codebook
    model.load_state_dict(sd, strict=True)
    assert model.vqvae.codebook._need_init is False


def test_decode_must_start_at_step_zero():
    vq = tiny_vqvae(sequence_length=4, resolution=8)
    model = VideoGPT(tiny_args(resolution=8, n_cond_frames=1), vqvae=vq).eval()
    x = torch.zeros(1, 1, 1, 1, 8)
    with torch.no_grad(), pytest.raises(RuntimeError, match="decode_step=0"):
        model(x, torch.zeros(1, 1, 1, 1, dtype=torch.long), {"frame_cond": torch.zeros(1, 3, 1, 8, 8)},
              decode_step=3, decode_idx=(0, 1, 1))


# ----------------------------------------------------------------------------------------------
# ResNet
# ----------------------------------------------------------------------------------------------
def test_resnet_shapes_and_errors():
    small = ResNet(3, [1, 1, 1, 1], 1, (2, 4, 4), resnet_dim=8)
    assert small(torch.randn(1, 3, 4, 16, 16)).shape == (1, 2, 4, 4, 8)
    stem = ResNet(3, [1, 1, 1, 1], 1, (2, 4, 4), resnet_dim=8, cifar_stem=False)
    assert isinstance(stem.stem[2], torch.nn.MaxPool3d)
    assert stem(torch.randn(1, 3, 4, 16, 16)).shape == (1, 2, 4, 4, 8)
    with pytest.raises(ValueError, match="powers of two"):
        ResNet(3, [1, 1, 1, 1], 1, (1, 3, 3))
    with pytest.raises(ValueError, match="halvings"):
        ResNet(3, [1, 1, 1, 1], 1, (1, 16, 16))
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        small(torch.randn(3, 16, 16))


def test_resnet_norm_in_fp32_keeps_dtype():
    torch.manual_seed(0)
    net = ResNet(3, [1, 1, 1, 1], 1, (1, 2, 2), resnet_dim=8)
    x = torch.randn(1, 3, 2, 8, 8)
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 weights, bf16 activations
        out = net(x)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), ref, rtol=0.1, atol=0.1)
    out = net.to(torch.bfloat16)(x.bfloat16())  # a model cast to bf16 still normalises in fp32
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), ref, rtol=0.1, atol=0.1)


def test_channel_layer_norm_is_layer_norm_over_channels():
    net = ResNet(3, [1, 1, 1, 1], 1, (1, 2, 2), resnet_dim=8)
    norm_relu = net.stem[1]
    norm = norm_relu.norm
    with torch.no_grad():
        norm.norm.weight.normal_()
        norm.norm.bias.normal_()
    x = torch.randn(2, 64, 3, 4, 5)
    expected = shift_dim(F.layer_norm(shift_dim(x, 1, -1), (64,), norm.norm.weight, norm.norm.bias), -1, 1)
    assert_close(norm(x), expected)
    assert_close(norm_relu(x), expected.relu())


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, (1, 2, 2), 1), (7, (1, 2, 2), 3), (1, 2, 0)])
def test_conv3d_explicit_cpu_padding_equals_nn_conv3d(k, stride, pad):
    conv = Conv3d(5, 6, k, stride=stride, padding=pad, bias=False)
    ref = torch.nn.Conv3d(5, 6, k, stride=stride, padding=pad, bias=False)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 5, 4, 9, 10)
    with torch.no_grad():
        assert_close(conv(x), ref(x))


def test_frame_encoder_cpu_bf16_gradients_finite():
    """Regression: torch's CPU bf16 conv backward with built-in padding returned non-finite weight
    gradients at random (about 1 step in 2 for this encoder with torch 2.13)."""
    torch.manual_seed(0)
    net = resnet34(1, (1, 4, 4), resnet_dim=16).train()
    for _ in range(20):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(torch.rand(2, 3, 2, 16, 16) - 0.5)
        y.float().square().mean().backward()
        bad = [n for n, p in net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, bad


# ----------------------------------------------------------------------------------------------
# bad inputs: clear errors naming the constraint
# ----------------------------------------------------------------------------------------------
def test_compute_loss_with_videos_the_vqvae_was_not_built_for():
    """A VQ-VAE for 4x32x32 clips fed 4x64x64 (or 8x32x32, or 1 channel): ValueError naming the
    expected and the given shape, not a broadcast error from the position embeddings."""
    model = VideoGPT(tiny_args(), vqvae=tiny_vqvae()).eval()
    for shape in [(2, 3, 4, 64, 64), (2, 3, 8, 32, 32), (2, 1, 4, 32, 32), (3, 4, 32, 32)]:
        with pytest.raises(ValueError, match=r"\(B, 3, 4, 32, 32\).*got " + re.escape(str(shape))):
            model.compute_loss({"video": torch.zeros(shape)})
    assert torch.isfinite(model.compute_loss({"video": torch.rand(2, 3, 4, 32, 32) - 0.5}))
    emb = torch.zeros(1, 4, 8, 4, 8)  # latent grid (4, 8, 4) instead of (4, 8, 8)
    with pytest.raises(ValueError, match=r"latent shape \(4, 8, 8\)"):
        model(emb, torch.zeros(1, 4, 8, 4, dtype=torch.long), {})


def _cond_prior():
    vq = tiny_vqvae(sequence_length=4, resolution=16)  # latent (4, 4, 4); frame features (1, 4, 4)
    model = VideoGPT(tiny_args(resolution=16, n_cond_frames=1, class_cond=True, class_cond_dim=3), vqvae=vq).eval()
    _randomize_head(model)
    return model


def test_sample_with_wrong_conditioning_frames():
    """Frames of another size than the prior's resolution (32x32 for a 16x16 prior), another channel
    count or too few frames: ValueError naming both shapes, before any sampling."""
    model = _cond_prior()
    label = torch.tensor([0, 2])
    for shape in [(2, 3, 4, 32, 32), (2, 1, 4, 16, 16), (2, 3, 4, 16, 8)]:
        with pytest.raises(ValueError, match=r"\(B, 3, 1, 16, 16\).*got " + re.escape(str((*shape[:2], 1, *shape[3:])))):
            model.sample(2, {"video": torch.zeros(shape), "label": label}, progress=False)
    with pytest.raises(ValueError, match="T >= n_cond_frames=1"):
        model.sample(2, {"video": torch.zeros(2, 3, 0, 16, 16), "label": label}, progress=False)
    with pytest.raises(ValueError, match=r"conditioning frames must be \(B, 3, 1, 16, 16\)"):
        model(torch.zeros(2, 4, 4, 4, 8), torch.zeros(2, 4, 4, 4, dtype=torch.long),
              {"class_cond": torch.eye(3)[:2], "frame_cond": torch.zeros(2, 3, 1, 32, 32)})


def test_labels_of_any_integer_dtype():
    """int32/int16/uint8 labels condition exactly as int64 ones; float, bool and out-of-range labels
    raise ValueError naming the constraint."""
    model = _cond_prior()
    video = torch.rand(2, 3, 4, 16, 16) - 0.5
    want = model.make_cond({"video": video, "label": torch.tensor([0, 2])})
    codes = model.sample_codes(2, {"video": video, "label": torch.tensor([0, 2])}, top_k=1, progress=False)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        batch = {"video": video, "label": torch.tensor([0, 2], dtype=dtype)}
        assert torch.equal(model.make_cond(batch)["class_cond"], want["class_cond"])
    batch = {"video": video, "label": torch.tensor([0, 2], dtype=torch.int32)}
    assert torch.equal(model.sample_codes(2, batch, top_k=1, progress=False), codes)
    for label, match in [(torch.tensor([0.0, 2.0]), "integer class indices"),
                         (torch.tensor([True, False]), "integer class indices"),
                         (torch.tensor([0, 3]), r"in \[0, 3\).*\[0, 3\]"),
                         (torch.tensor([-1, 0], dtype=torch.int32), r"in \[0, 3\)")]:
        with pytest.raises(ValueError, match=match):
            model.sample(2, {"video": video, "label": label}, progress=False)
