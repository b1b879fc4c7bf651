"""Longer videos than the trained grid (issue 16): VideoGPT.sample(latent_frames=...), the windowed
VQ-VAE decode, continuation from given codes (sample_codes(prefix=...))."""
from __future__ import annotations

import argparse

import pytest
import torch

from videogpt_fast import sample as S
from videogpt_fast.gpt import VideoGPT
from videogpt_fast.long_video import decode_latents, decode_windows
from videogpt_fast.vqvae import VQVAE


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_prior(seed: int = 0, downsample=(2, 4, 4), temporal_padding: str = "zeros") -> VideoGPT:
    """Latents (3, 2, 2) of 6-frame 8x8 videos (downsample_t 2), random weights with non-flat logits."""
    torch.manual_seed(seed)
    vq = VQVAE(argparse.Namespace(embedding_dim=8, n_codes=16, n_hiddens=8, n_res_layers=1, downsample=list(downsample),
                                  sequence_length=6 if downsample[0] == 2 else 3, resolution=8,
                                  temporal_padding=temporal_padding))
    gpt = VideoGPT(dict(vqvae="unused", n_cond_frames=0, class_cond=False, hidden_dim=24, heads=2, layers=1,
                        dropout=0.0, attn_type="full", attn_dropout=0.0), vqvae=vq)
    with torch.no_grad():
        gpt.fc_out.weight.normal_(std=0.5)
    return gpt.eval()


@pytest.mark.parametrize("latent_frames, decode", [(None, "one_pass"), (3, "windows"), (5, "one_pass"),
                                                   (7, "windows"), (4, "one_pass")])
def test_sample_shapes(latent_frames, decode):
    gpt = tiny_prior()
    assert gpt.shape == (3, 2, 2)
    v = gpt.sample(2, progress=False, latent_frames=latent_frames, decode=decode)
    t = 2 * (latent_frames or 3)
    assert v.shape == (2, 3, t, 8, 8) and v.dtype == torch.float32
    assert 0 <= float(v.min()) and float(v.max()) <= 1


def test_sample_decodes_the_sampled_codes():
    """sample(latent_frames) is sample_codes(latent_frames) (same seed) decoded by the chosen mode (the
    windows as sampled: the default handover re-encodes the contexts)."""
    gpt = tiny_prior()
    codes = gpt.sample_codes(2, progress=False, latent_frames=5, generator=torch.Generator().manual_seed(4))
    for decode in ("one_pass", "windows"):
        v = gpt.sample(2, progress=False, latent_frames=5, generator=torch.Generator().manual_seed(4), decode=decode)
        assert torch.equal(v, decode_latents(gpt.vqvae, codes, decode, window=3, handover="reencode"))
    assert torch.equal(decode_latents(gpt.vqvae, codes, "one_pass"), gpt.vqvae.decode(codes).clamp(-0.5, 0.5) + 0.5)
    with pytest.raises(ValueError, match="decode must be one of"):
        gpt.sample(1, progress=False, decode="blend")


def test_decode_windows_cross_fades_float64():
    """Three latent frames, windows of 2 overlapping by 1, downsample_t 2: pixel frames 0-1 are the
    first window's, 4-5 the second's, 2-3 fade linearly (weights 2/3, 1/3 then 1/3, 2/3)."""
    vq = tiny_prior().vqvae.double()
    codes = torch.randint(0, 16, (2, 3, 2, 2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = vq.decode(codes[:, :2]), vq.decode(codes[:, 1:])
    w = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64).view(-1, 1, 1)
    expected = torch.cat([a[:, :, :2], w * a[:, :, 2:] + (1 - w) * b[:, :, :2], b[:, :, 2:]], dim=2)
    got = decode_windows(vq, codes, window=2, overlap=1)
    assert got.shape == (2, 3, 6, 8, 8)
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)
    # alignment and normalisation with up to three windows over a frame (the last overlaps more): a
    # decoder that maps latent frame t to pixel value t everywhere must come back unchanged
    class FrameIndexDecoder:
        downsample = (3, 1, 1)

        def decode(self, c):
            return c[:, None, :, :1, :1].double().repeat_interleave(3, dim=2).expand(-1, 3, -1, 2, 2)

    for t, window, overlap in [(7, 4, 2), (9, 4, 1), (5, 2, 0), (8, 5, 4)]:
        frame = torch.arange(t).view(1, t, 1, 1).expand(2, t, 2, 2)
        got = decode_windows(FrameIndexDecoder(), frame, window=window, overlap=overlap)
        torch.testing.assert_close(got, FrameIndexDecoder().decode(frame), atol=1e-6, rtol=0)
    codes = torch.randint(0, 16, (1, 7, 2, 2), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="latent_frames >= T > context_frames"):
        decode_windows(vq, codes, window=4, overlap=4)


def test_decode_windows_of_one_window_is_one_decode():
    vq = tiny_prior().vqvae
    codes = torch.randint(0, 16, (2, 3, 2, 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(decode_windows(vq, codes, window=3), vq.decode(codes))


def test_prefix_is_kept_and_teacher_forced():
    """Greedy: continuing from the first P latent frames of a greedy sample gives the same codes
    (the prefix written in one pass is what position-by-position sampling had written)."""
    gpt = tiny_prior(seed=3)
    full = S.sample_codes(gpt, 2, top_k=1, progress=False, latent_frames=6)
    for p in (1, 2):
        cont = S.sample_codes(gpt, 2, top_k=1, progress=False, latent_frames=6, prefix=full[:, :p])
        assert torch.equal(cont, full)
    other = torch.randint(0, 16, (2, 1, 2, 2), generator=torch.Generator().manual_seed(5))
    cont = S.sample_codes(gpt, 2, top_k=1, progress=False, latent_frames=4, prefix=other)
    assert torch.equal(cont[:, :1], other) and cont.shape == (2, 4, 2, 2)
    logits = S.teacher_forced_decode(gpt, cont[:, :3])  # the first window, argmax after the prefix
    assert torch.equal(logits.argmax(-1)[:, 4:], cont[:, :3].reshape(2, -1)[:, 4:])
    for bad in (torch.zeros(2, 3, 2, 2, dtype=torch.long), torch.zeros(1, 1, 2, 2, dtype=torch.long),
                torch.zeros(2, 1, 3, 2, dtype=torch.long)):
        with pytest.raises(ValueError, match="prefix must be codes"):
            S.sample_codes(gpt, 2, progress=False, latent_frames=4, prefix=bad)


def test_encode_context_encodes_frames_as_a_clip_start():
    """The context frames padded to the trained length with their last frame, encoded, first c kept."""
    vq = tiny_prior().vqvae
    frames = torch.rand(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) - 0.5  # c = 2 latent frames
    with torch.no_grad():  # codebook initialised from latents (as the original's first batch does): codes vary
        z = vq._latents(frames).movedim(1, -1).reshape(-1, 8)
        vq.codebook.embeddings.copy_(z[torch.randperm(len(z), generator=torch.Generator().manual_seed(1))[:16]])
    got = S.encode_context(vq, frames, window=3)
    with torch.no_grad():
        want = vq.encode(torch.cat([frames, frames[:, :, 3:4], frames[:, :, 3:4]], dim=2))[:, :2]  # 6 frames
        alone = vq.encode(frames)
    assert got.shape == (2, 2, 2, 2) and torch.equal(got, want)
    assert not torch.equal(got, alone)  # the padding changes the codes of this VQ-VAE
    for bad in (frames[:, :, :3], frames[:, :, :0], torch.cat([frames, frames[:, :, :2]], dim=2)):
        with pytest.raises(ValueError, match="encode_context: frames must be"):
            S.encode_context(vq, bad, window=3)


def test_encode_context_pads_by_replaying_the_frames():
    """pad="repeat": the context frames replayed from their first to the trained length (c = 1 of
    T = 3: f0 f1 f0 f1 f0 f1; c = 2: f0 .. f3 f0 f1), encoded, first c kept; another pad is refused.
    reencode_context hands over the decoded window's last frames padded that way."""
    vq = tiny_prior().vqvae
    frames = torch.rand(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) - 0.5
    with torch.no_grad():
        z = vq._latents(frames).movedim(1, -1).reshape(-1, 8)
        vq.codebook.embeddings.copy_(z[torch.randperm(len(z), generator=torch.Generator().manual_seed(1))[:16]])
        for c in (1, 2):
            f = frames[:, :, :2 * c]
            got = S.encode_context(vq, f, window=3, pad="repeat")
            want = vq.encode(torch.cat([f, f, f], dim=2)[:, :, :6])[:, :c]
            assert got.shape == (2, c, 2, 2) and torch.equal(got, want)
        assert not torch.equal(S.encode_context(vq, frames, 3, pad="repeat"), S.encode_context(vq, frames, 3))
        with pytest.raises(ValueError, match="pad must be one of"):
            S.encode_context(vq, frames, window=3, pad="reflect")
        codes = vq.encode(torch.rand(2, 3, 6, 8, 8, generator=torch.Generator().manual_seed(2)) - 0.5)
        pixels = vq.decode(codes)
        want = S.encode_context(vq, pixels.clamp(-0.5, 0.5)[:, :, 2:], window=3, pad="repeat")
        assert torch.equal(S.reencode_context(vq, codes, 2), want)
        assert torch.equal(S.reencode_context(vq, codes, 2, pixels=pixels), want)


def test_reencoded_windows_are_decoded_as_sampled():
    """handover="reencode": the windowed decode rebuilds each sampled window (its context re-encoded
    from the previous window's pixels); VideoGPT.sample decodes it that way, "codes" as stored."""
    gpt = tiny_prior(seed=1)
    T, c, frames = 3, 1, 7
    codes = gpt.sample_codes(2, top_k=1, progress=False, latent_frames=frames, handover="reencode")
    windows = S.latent_windows(frames, T, c)
    built, previous = [], None
    for start, shared in windows:
        window = codes[:, start:start + T]
        if shared:
            window = torch.cat([S.reencode_context(gpt.vqvae, previous, shared), window[:, shared:]], dim=1)
        built.append(window)
        previous = window
    assert any(not torch.equal(w, codes[:, s:s + T]) for w, (s, _) in zip(built, windows))
    got = decode_windows(gpt.vqvae, codes, T, overlap=c, handover="reencode")
    with torch.no_grad():
        for k, (start, shared) in enumerate(windows):  # pixel frames only this window covers
            nxt = windows[k + 1][0] if k + 1 < len(windows) else frames
            lo, hi = (start + shared) * 2, nxt * 2
            if hi > lo:
                alone = gpt.vqvae.decode(built[k])[:, :, lo - start * 2:hi - start * 2]
                torch.testing.assert_close(got[:, :, lo:hi], alone)
    for handover in ("reencode", "codes"):
        kw = dict(top_k=1, progress=False, latent_frames=frames, context_frames=c, handover=handover)
        v = gpt.sample(2, **kw)
        want = decode_latents(gpt.vqvae, gpt.sample_codes(2, **kw), "windows", window=T, context_frames=c,
                              handover=handover)
        assert torch.equal(v, want)
    assert not torch.equal(got, decode_windows(gpt.vqvae, codes, T, overlap=c))
    with pytest.raises(ValueError, match="handover must be one of"):
        gpt.sample_codes(1, progress=False, latent_frames=5, handover="copy")
    with pytest.raises(ValueError, match="handover must be one of"):
        decode_windows(gpt.vqvae, codes, T, handover="copy")


def test_decode_latents_rejects_bad_codes_and_windows():
    """window=0 is an error (it silently meant the default window), and codes that are not a 4-d
    tensor are a clear ValueError (not an AttributeError / IndexError)."""
    vq = tiny_prior().vqvae
    codes = torch.zeros(1, 5, 2, 2, dtype=torch.long)
    for window in (0, -1):
        with pytest.raises(ValueError, match="latent_frames >= T > context_frames"):
            decode_latents(vq, codes, "windows", window=window)
    for bad in ([[0]], torch.zeros(5, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"codes must be a \(n, t, h, w\) tensor"):
            decode_latents(vq, bad, "windows")


@pytest.mark.parametrize("padding, expected", [("zeros", "reencode"), ("replicate", "codes")])
def test_default_handover_follows_the_vqvae_s_temporal_padding(padding, expected):
    """Without ``handover``, windows of a time-agnostic VQ-VAE's codes are handed over as codes, those
    of the original's zero-padded one re-encoded: sample_codes and sample give what the explicit
    hand-over gives with the same generator."""
    gpt = tiny_prior(temporal_padding=padding)
    assert S.default_handover(gpt.vqvae) == expected
    kw = dict(progress=False, latent_frames=7, context_frames=1)
    seeded = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    other = "codes" if expected == "reencode" else "reencode"
    default = gpt.sample_codes(2, generator=seeded(), **kw)
    assert torch.equal(default, gpt.sample_codes(2, generator=seeded(), handover=expected, **kw))
    assert not torch.equal(default, gpt.sample_codes(2, generator=seeded(), handover=other, **kw))
    assert torch.equal(gpt.sample(2, generator=seeded(), **kw), gpt.sample(2, generator=seeded(), handover=expected, **kw))


@pytest.mark.parametrize("padding, expected", [("zeros", "reencode"), ("replicate", "codes")])
def test_the_hand_over_used_is_shown_and_logged(padding, expected, capfd, caplog):
    """The hand-over a long sample resolves to (default_handover's, or the one given) is no silent
    choice: the progress bar and the INFO log name it."""
    import logging
    gpt = tiny_prior(temporal_padding=padding)
    with caplog.at_level(logging.INFO, logger="videogpt_fast.sample"):
        gpt.sample_codes(1, progress=True, latent_frames=7, context_frames=1)
    assert f"window 3/3, {expected} hand-over" in capfd.readouterr().err
    assert any(f"3 windows, {expected} hand-over" in r.getMessage() for r in caplog.records)
    gpt.sample_codes(1, progress=True, latent_frames=7, context_frames=1, handover="codes")
    assert "window 3/3, codes hand-over" in capfd.readouterr().err
