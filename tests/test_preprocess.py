"""preprocess: exact match with the original's fixture, other shapes, argument errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import load_fixture
from videogpt_fast.data import preprocess


@pytest.mark.parametrize("case", ["20x90x120_r64_s16", "9x120x72_r32_s8", "16x64x64_r64_sNone", "12x37x53_r16_s12"])
def test_matches_original_fixture(case):
    c = load_fixture("preprocess.pt")[case]
    out = preprocess(c["video"], c["resolution"], c["sequence_length"])
    assert out.dtype == torch.float32 and out.shape == c["out"].shape
    assert torch.equal(out, c["out"])


def _reference(video, resolution, sequence_length=None):
    # Independent statement of the original's semantics, written per frame.
    frames = video[:sequence_length] if sequence_length else video
    t, h, w, c = frames.shape
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    out = []
    for f in frames:
        x = F.interpolate(f.permute(2, 0, 1)[None].float() / 255.0, size=size, mode="bilinear", align_corners=False)[0]
        top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        out.append(x[:, top:top + resolution, left:left + resolution] - 0.5)
    return torch.stack(out, 1)


@pytest.mark.parametrize("shape,res,seq", [((5, 33, 47, 3), 16, 4), ((3, 64, 31, 3), 24, None), ((2, 10, 10, 1), 20, 2),
                                           ((4, 17, 17, 3), 17, None), ((6, 240, 320, 3), 128, 6)])
def test_other_shapes(shape, res, seq):
    g = torch.Generator().manual_seed(sum(shape))
    video = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    out = preprocess(video, res, seq)
    assert out.shape == (shape[3], seq or shape[0], res, res)
    assert out.min() >= -0.5 and out.max() <= 0.5
    torch.testing.assert_close(out, _reference(video, res, seq), rtol=0, atol=1e-6)


def test_float_input_same_as_uint8():
    video = torch.randint(0, 256, (4, 30, 40, 3), dtype=torch.uint8)
    assert torch.equal(preprocess(video, 16), preprocess(video.float(), 16))


@pytest.mark.parametrize("bad,match", [(torch.zeros(4, 8, 8, dtype=torch.uint8), "rank 4"),
                                       (torch.zeros(2, 4, 8, 8, 3, dtype=torch.uint8), "rank 4"),
                                       (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), "channels-last"),
                                       (torch.zeros(0, 8, 8, 3, dtype=torch.uint8), "non-empty")])
def test_bad_shapes(bad, match):
    with pytest.raises(ValueError, match=match):
        preprocess(bad, 8)


def test_bad_sequence_length_and_resolution():
    video = torch.zeros(4, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="sequence_length"):
        preprocess(video, 8, 5)
    with pytest.raises(ValueError, match="resolution"):
        preprocess(video, 0)
    with pytest.raises(ValueError, match="torch.Tensor"):
        preprocess(video.numpy(), 8)


@pytest.mark.parametrize("shape,res", [((3, 30, 50, 3), 16), ((2, 41, 23, 1), 12), ((1, 9, 9, 3), 20)])
def test_resize_crop_frames_is_the_shared_step(shape, res):
    """The one resize/crop of the training preprocessing and of the FVD's: (N, C, R, R) in [0, 1],
    and FVD's preprocess is exactly 2 * the training one, video by video."""
    from videogpt_fast.data.preprocess import resize_crop_frames
    from videogpt_fast.fvd import preprocess as fvd_preprocess
    g = torch.Generator().manual_seed(sum(shape) + res)
    video = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    x = resize_crop_frames(video, res)
    assert x.shape == (shape[0], shape[3], res, res) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x.permute(1, 0, 2, 3) - 0.5, _reference(video, res), rtol=0, atol=1e-6)
    assert torch.equal(fvd_preprocess(video[None], res)[0], 2 * preprocess(video, res))
