"""FVD: I3D port (keys, shapes, outputs of the original), preprocessing, Frechet distance, loading.

The hard-coded I3D numbers below were produced by the original ``videogpt/fvd/pytorch_i3d.py``
(fp32, CPU) with the deterministic weights and inputs defined in this file.
"""
from __future__ import annotations

import hashlib
import math
import pathlib
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import assert_close, load_fixture
from videogpt_fast.fvd import (InceptionI3d, compute_fvd, frechet_distance, get_fvd_logits,
                               load_i3d_pretrained, preprocess)
from videogpt_fast.checkpoint import CheckpointError
from videogpt_fast.fvd.fvd import I3D_FILENAME

# ----------------------------------------------------------------------------------------------
# Helpers


def deterministic_state_dict(model: nn.Module) -> dict:
    """Every float tensor of the state dict filled with a fixed sinusoidal pattern (no RNG)."""
    out = {}
    for i, (key, v) in enumerate(model.state_dict().items()):
        if not v.is_floating_point():
            out[key] = v.clone()
            continue
        k = torch.arange(v.numel(), dtype=torch.float64)
        if key.endswith("running_var"):
            w = 1.0 + 0.5 * torch.sin(0.7 * k + i)
        elif key.endswith("running_mean"):
            w = 0.1 * torch.sin(1.3 * k + i)
        elif key.endswith("bn.weight"):
            w = 1.0 + 0.3 * torch.sin(0.9 * k + i)
        elif key.endswith("bias"):
            w = 0.1 * torch.cos(1.1 * k + i)
        else:  # conv weight (out, in, kt, kh, kw), He-like scale
            w = 2.0 * math.sqrt(1.0 / v[0].numel()) * torch.sin(0.61803 * k + 0.5 * i)
        out[key] = w.reshape(v.shape).to(v.dtype)
    return out


def deterministic_input(shape) -> torch.Tensor:
    k = torch.arange(math.prod(shape), dtype=torch.float64)
    return (torch.sin(0.013 * k) * torch.cos(0.0007 * k + 1.0)).reshape(shape).float()


@pytest.fixture(scope="module")
def i3d() -> InceptionI3d:
    model = InceptionI3d(400, in_channels=3)
    model.load_state_dict(deterministic_state_dict(model), strict=True)
    return model.eval()


def random_videos(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


class TinyFeatures(nn.Module):
    """A cheap stand-in for I3D: per-channel moments of the video, mixed linearly; records batches."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 5)
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        feats = torch.cat([x.mean(dim=(2, 3, 4)), x.pow(2).mean(dim=(2, 3, 4))], dim=1)
        return self.proj(feats)


# ----------------------------------------------------------------------------------------------
# I3D structure: the original's module names and state-dict keys

_MIXED = {  # name: (in_channels, [b0, b1a, b1b, b2a, b2b, b3b]) as in the original pytorch_i3d.py
    "Mixed_3b": (192, [64, 96, 128, 16, 32, 32]),
    "Mixed_3c": (256, [128, 128, 192, 32, 96, 64]),
    "Mixed_4b": (480, [192, 96, 208, 16, 48, 64]),
    "Mixed_4c": (512, [160, 112, 224, 24, 64, 64]),
    "Mixed_4d": (512, [128, 128, 256, 24, 64, 64]),
    "Mixed_4e": (512, [112, 144, 288, 32, 64, 64]),
    "Mixed_4f": (528, [256, 160, 320, 32, 128, 128]),
    "Mixed_5b": (832, [256, 160, 320, 32, 128, 128]),
    "Mixed_5c": (832, [384, 192, 384, 48, 128, 128]),
}
# sha256 of "key:shape:dtype" lines of the original InceptionI3d(400, in_channels=3).state_dict(),
# in order; 344 entries, 12,711,881 elements.
_ORIGINAL_KEYS_SHA256 = "220db65095e044b43be55066bb309e31570ef622f8ff6c0f0c4669b0c18dd427"


def expected_shapes(num_classes: int = 400, in_channels: int = 3) -> dict:
    shapes = {"logits.conv3d.weight": (num_classes, 1024, 1, 1, 1), "logits.conv3d.bias": (num_classes,)}

    def unit(prefix, cin, cout, k):
        shapes[f"{prefix}.conv3d.weight"] = (cout, cin, k, k, k)
        for buf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.bn.{buf}"] = (cout,)
        shapes[f"{prefix}.bn.num_batches_tracked"] = ()

    unit("Conv3d_1a_7x7", in_channels, 64, 7)
    unit("Conv3d_2b_1x1", 64, 64, 1)
    unit("Conv3d_2c_3x3", 64, 192, 3)
    for name, (cin, c) in _MIXED.items():
        unit(f"{name}.b0", cin, c[0], 1)
        unit(f"{name}.b1a", cin, c[1], 1)
        unit(f"{name}.b1b", c[1], c[2], 3)
        unit(f"{name}.b2a", cin, c[3], 1)
        unit(f"{name}.b2b", c[3], c[4], 3)
        unit(f"{name}.b3b", cin, c[5], 1)
    return shapes


def test_i3d_state_dict_matches_original(i3d):
    sd = i3d.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes()
    assert list(sd)[:3] == ["logits.conv3d.weight", "logits.conv3d.bias", "Conv3d_1a_7x7.conv3d.weight"]
    desc = "\n".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in sd.items())
    assert len(sd) == 344 and sum(v.numel() for v in sd.values()) == 12_711_881
    assert hashlib.sha256(desc.encode()).hexdigest() == _ORIGINAL_KEYS_SHA256
    # Top-level module order of the original: avg_pool, dropout, logits, then the endpoints.
    assert list(i3d._modules)[:4] == ["avg_pool", "dropout", "logits", "Conv3d_1a_7x7"]
    assert isinstance(i3d.dropout, nn.Dropout) and i3d.dropout.p == 0.5


def test_i3d_other_constructor_args():
    m = InceptionI3d(num_classes=7, in_channels=1, dropout_keep_prob=0.3)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == expected_shapes(num_classes=7, in_channels=1)
    assert m.dropout.p == 0.3
    m.replace_logits(11)
    assert tuple(m.logits.conv3d.weight.shape) == (11, 1024, 1, 1, 1)
    with pytest.raises(ValueError, match="Unknown final endpoint"):
        InceptionI3d(final_endpoint="Mixed_9z")


# (input shape, logits shape, first logits of row 0 from the original)
_I3D_CASES = [
    ((1, 3, 9, 193, 193), (1, 400),
     [0.04104652, -0.03844271, -0.09087761, -0.05511903, 0.05955277, 0.11400920, 0.02356814, -0.09069353]),
    ((1, 3, 16, 224, 224), (1, 400),
     [0.04396378, -0.03940212, -0.09347361, -0.05329049, 0.06153649, 0.11151645, 0.02241898, -0.08781597]),
    ((1, 3, 10, 200, 230), (1, 400, 2), [[0.04157243, 0.04146986], [-0.03871601, -0.03900966]]),
]


@pytest.mark.parametrize("shape,out_shape,head", _I3D_CASES, ids=["min_9x193", "fvd_16x224", "wide_10x200x230"])
def test_i3d_outputs_match_original(i3d, shape, out_shape, head):
    with torch.no_grad():
        y = i3d(deterministic_input(shape))
    assert tuple(y.shape) == out_shape
    expected = torch.tensor(head)
    assert_close(y[0, :len(head)], expected, rtol=1e-4, atol=2e-6)


def test_i3d_summaries_match_original(i3d):
    x = deterministic_input((1, 3, 9, 193, 193))
    with torch.no_grad():
        y = i3d(x)
        f = i3d.extract_features(x)
    assert tuple(f.shape) == (1, 1024, 1, 1, 1)
    assert_close((y ** 2).sum(), torch.tensor(2.05488896), rtol=1e-4, atol=0)
    assert_close(y.sum(), torch.tensor(0.02178389), rtol=0, atol=2e-5)
    assert int(y.argmax()) == 359
    assert_close(f.flatten()[:3], torch.tensor([3.91878514e-03, 1.05829306e-01, 1.75317079e-02]), rtol=1e-4, atol=1e-6)
    assert_close(f.flatten()[512:516], torch.tensor([0.04569368, 0.00198666, 0.02971100, 0.03659986]),
                 rtol=1e-4, atol=1e-6)


def test_i3d_input_checks(i3d):
    with pytest.raises(ValueError, match="too small"):
        i3d(torch.zeros(1, 3, 8, 193, 193))
    with pytest.raises(ValueError, match="too small"):
        i3d(torch.zeros(1, 3, 9, 192, 224))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        i3d(torch.zeros(1, 1, 16, 224, 224))
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        i3d(torch.zeros(3, 16, 224, 224))


def test_i3d_early_endpoint_returns_features():
    m = InceptionI3d(final_endpoint="MaxPool3d_3a_3x3").eval()
    assert m.logits is None and "Mixed_3b" not in m._modules
    with torch.no_grad():
        y = m(torch.zeros(2, 3, 5, 33, 40))
    assert tuple(y.shape) == (2, 192, 3, 5, 5)  # ceil: t /2, h and w /8


# ----------------------------------------------------------------------------------------------
# Preprocessing


def reference_preprocess(videos: torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """The original's semantics written out video by video (videogpt.data.preprocess, then * 2)."""
    out = []
    for video in videos:
        v = video.permute(0, 3, 1, 2).float() / 255.0
        t, c, h, w = v.shape
        scale = resolution / min(h, w)
        size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
        v = F.interpolate(v, size=size, mode="bilinear", align_corners=False)
        hs, ws = (v.shape[2] - resolution) // 2, (v.shape[3] - resolution) // 2
        v = v[:, :, hs:hs + resolution, ws:ws + resolution].permute(1, 0, 2, 3).contiguous()
        out.append(v - 0.5)
    return torch.stack(out) * 2


def test_preprocess_matches_reference_fixture():
    cases = load_fixture("preprocess.pt")
    for name, case in cases.items():
        video = case["video"]
        if case["sequence_length"] is not None:
            video = video[:case["sequence_length"]]
        out = preprocess(video[None].numpy(), target_resolution=case["resolution"])
        assert_close(out[0], case["out"] * 2, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64, 3), (3, 2, 48, 80, 3), (2, 2, 90, 60, 3), (1, 2, 300, 256, 3)])
def test_preprocess_matches_per_video_original(shape):
    videos = random_videos(shape, seed=sum(shape))
    out = preprocess(videos.numpy())
    assert out.shape == (shape[0], 3, shape[1], 224, 224) and out.dtype == torch.float32
    assert out.is_contiguous()
    torch.testing.assert_close(out, reference_preprocess(videos), rtol=0, atol=0)
    assert out.min() >= -1.0 and out.max() <= 1.0
    torch.testing.assert_close(preprocess(videos), out, rtol=0, atol=0)  # torch input too


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((1, 2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        preprocess(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(TypeError):
        preprocess([[0]])


# ----------------------------------------------------------------------------------------------
# Frechet distance


def scipy_frechet(x1: np.ndarray, x2: np.ndarray) -> float:
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


def test_frechet_matches_reference_fixture():
    f = load_fixture("frechet.pt")
    fd64 = frechet_distance(f["x1"].double(), f["x2"].double())
    assert fd64.dtype == torch.float64 and fd64.dim() == 0
    assert_close(fd64, f["fd"], rtol=1e-10, atol=0)
    fd32 = frechet_distance(f["x1"], f["x2"])  # the original keeps the input dtype
    assert fd32.dtype == torch.float32
    assert_close(fd32, f["fd"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("n,d,seed", [(40, 6, 0), (200, 32, 1), (64, 63, 2)])
def test_frechet_matches_scipy(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    x2 = torch.randn(n + 7, d, generator=g, dtype=torch.float64) @ mix + 0.3
    fd = frechet_distance(x1, x2)
    assert fd.item() == pytest.approx(scipy_frechet(x1.numpy(), x2.numpy()), rel=1e-7)


def test_frechet_properties():
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(50, 8, generator=g, dtype=torch.float64)
    x2 = torch.randn(60, 8, generator=g, dtype=torch.float64) * 1.5 + 1.0
    x1_copy, x2_copy = x1.clone(), x2.clone()
    fd12, fd21 = frechet_distance(x1, x2), frechet_distance(x2, x1)
    assert torch.equal(x1, x1_copy) and torch.equal(x2, x2_copy)  # inputs are not centred in place
    assert fd12.item() > 1.0
    assert fd12.item() == pytest.approx(fd21.item(), rel=1e-10)
    assert abs(frechet_distance(x1, x1.clone()).item()) < 1e-10
    # a pure shift of the same set adds exactly the squared mean difference
    shift = torch.linspace(-1, 1, 8, dtype=torch.float64)
    assert frechet_distance(x1, x1 + shift).item() == pytest.approx((shift ** 2).sum().item(), rel=1e-8)
    # trailing feature dims are flattened
    assert torch.equal(frechet_distance(x1.view(50, 2, 4), x2.view(60, 2, 4)), fd12)


def test_frechet_rejects_bad_input():
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="floating point"):
        frechet_distance(torch.ones(5, 3, dtype=torch.long), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\(N, features"):
        frechet_distance(torch.randn(5), torch.randn(5))


# ----------------------------------------------------------------------------------------------
# Logits and compute_fvd


def test_get_fvd_logits_batches_like_one_pass():
    videos = random_videos((5, 3, 20, 24, 3), seed=3)
    net = TinyFeatures()
    logits = get_fvd_logits(videos.numpy(), net, device="cpu", bs=2)
    assert net.batches == [2, 2, 1]
    assert logits.shape == (5, 5) and not logits.requires_grad
    with torch.no_grad():
        expected = net(reference_preprocess(videos))
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="bs must be >= 1"):
        get_fvd_logits(videos, net, device="cpu", bs=0)


def test_get_fvd_logits_with_i3d(i3d):
    videos = random_videos((3, 9, 12, 16, 3), seed=4)
    logits = get_fvd_logits(videos, i3d, device="cpu", bs=2)
    with torch.no_grad():
        expected = i3d(reference_preprocess(videos))
    assert logits.shape == (3, 400)
    assert_close(logits, expected, rtol=1e-5, atol=1e-6)


def test_compute_fvd_is_frechet_of_logits():
    real = random_videos((6, 4, 16, 16, 3), seed=6)
    fake = (real.float() * 0.6).to(torch.uint8)
    net = TinyFeatures()
    value = compute_fvd(real.numpy(), fake.numpy(), net, device="cpu", bs=4)
    with torch.no_grad():
        fr, ff = net(reference_preprocess(real)), net(reference_preprocess(fake))
    assert isinstance(value, float)
    assert value == pytest.approx(frechet_distance(ff, fr).item(), rel=1e-5)
    assert value > 1e-3
    assert abs(compute_fvd(real, real, net, device="cpu")) < 1e-4


# ----------------------------------------------------------------------------------------------
# Loading pretrained weights (local files only)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, i3d):
    path = tmp_path_factory.mktemp("i3d") / I3D_FILENAME
    torch.save(i3d.state_dict(), path)
    return path


def _assert_same_weights(model, reference):
    assert not model.training
    sd, ref = model.state_dict(), reference.state_dict()
    assert list(sd) == list(ref)
    for k in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_5c.b3b.bn.running_var", "logits.conv3d.bias"):
        assert torch.equal(sd[k], ref[k])


def test_load_i3d_pretrained_from_path(weights_file, i3d):
    _assert_same_weights(load_i3d_pretrained(weights_file), i3d)
    _assert_same_weights(load_i3d_pretrained(str(weights_file.parent), device="cpu"), i3d)  # a folder


def test_load_i3d_pretrained_from_caches(weights_file, i3d, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VIDEOGPT_FAST_HOME", str(tmp_path / "fast_home"))
    with pytest.raises(FileNotFoundError, match=I3D_FILENAME) as err:
        load_i3d_pretrained()
    assert str(tmp_path / "fast_home" / I3D_FILENAME) in str(err.value)
    # the original's cache ~/.cache/videogpt is searched too
    legacy = tmp_path / "home" / ".cache" / "videogpt"
    legacy.mkdir(parents=True)
    (legacy / I3D_FILENAME).symlink_to(weights_file)
    _assert_same_weights(load_i3d_pretrained(None), i3d)
    # $VIDEOGPT_FAST_HOME comes first; the original's positional call load_i3d_pretrained(device) works
    (tmp_path / "fast_home").mkdir()
    (tmp_path / "fast_home" / I3D_FILENAME).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=I3D_FILENAME):  # one line naming the file
        load_i3d_pretrained(torch.device("cpu"))
    (tmp_path / "fast_home" / I3D_FILENAME).unlink()
    (tmp_path / "fast_home" / I3D_FILENAME).symlink_to(weights_file)
    _assert_same_weights(load_i3d_pretrained(torch.device("cpu")), i3d)


def test_load_i3d_pretrained_default_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VIDEOGPT_FAST_HOME", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        load_i3d_pretrained()
    assert str(tmp_path / ".cache" / "videogpt_fast" / I3D_FILENAME) in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_i3d_pretrained(tmp_path / "missing.pt")


def test_load_i3d_pretrained_is_weights_only(tmp_path):
    path = tmp_path / I3D_FILENAME
    torch.save({"args": pathlib.PurePosixPath("a")}, path)  # a global outside the allow-list
    with pytest.raises(pickle.UnpicklingError):  # UnsafeCheckpointError: nothing of it ran
        load_i3d_pretrained(path)
    torch.save({"Conv3d_1a_7x7.conv3d.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"is not the I3D network's state dict .*key\(s\) missing"):
        load_i3d_pretrained(path)  # a one-line error naming the file, not load_state_dict's RuntimeError
