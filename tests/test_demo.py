"""The demo, drastically shortened: it writes valid reconstruction and sample videos and a loss plot."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import decode_video
from PIL import Image

from videogpt_fast import demo
from videogpt_fast.checkpoint import load_videogpt, load_vqvae
from videogpt_fast.run_dir import LOCK_NAME




def test_short_demo_writes_videos_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--output", str(out), "--steps", "3", "--gpt_steps", "2", "--n_videos", "16",
                      "--n_samples", "2", "--no_progress", "--frames", "11"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "sampling" not in captured.err  # --no_progress covers the sampling bar too
    # --frames: a long sample of 11 frames (6 latent frames, two windows) and its coherence report
    assert decode_video(out / "long_samples.mp4").shape[0] == decode_video(out / "long_samples.gif").shape[0] == 11
    # and as one PNG strip: a row per sample (2), a column per frame (11), each 32 x 32 scaled 3x
    assert Image.open(out / "long_samples.png").size == (11 * 32 * 3, 2 * 32 * 3) and "long_samples.png" in printed
    assert "shape area per 8-frame window" in printed and "one-pass decode" in printed
    import json
    report = json.loads((out / "summary.json").read_text())["long_video"]
    assert len(report["area_per_window"]) == 2 and report["latent_frames"] == 6
    assert 0 < report["area_training"] < 0.3 and set(report["recon_mse"]) == {"one_pass", "windows", "trained_length"}
    for name in ("reconstructions.mp4", "reconstructions.gif", "samples.mp4", "samples.gif", "losses.png"):
        assert (out / name).is_file(), name
        assert name in printed  # the demo says where it wrote
    for name in ("reconstructions", "samples"):
        mp4, gif = decode_video(out / f"{name}.mp4"), decode_video(out / f"{name}.gif")
        assert mp4.shape[0] == gif.shape[0] == demo.SEQUENCE_LENGTH
        h, w = gif.shape[1:3]
        assert mp4.shape[1:] == (h + h % 2, w + w % 2, 3)  # H.264 pads odd sizes by one row/column
    # reconstructions: 8 held-out videos (input | reconstruction) in a 4x2 grid, each 32 x 64
    assert decode_video(out / "reconstructions.gif").shape[1:3] == (2 * 33 + 1, 4 * 65 + 1)
    assert Image.open(out / "losses.png").size[0] > 100
    assert load_vqvae(out / "vqvae" / "last.ckpt").latent_shape == (4, 8, 8)
    assert load_videogpt(out / "gpt" / "last.ckpt").shape == (4, 8, 8)
    # a second demo into the same folder is refused before any work (no mixed checkpoints/metrics)
    def files():  # everything but the lock file, which every attempt opens
        return sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*") if p.name != LOCK_NAME)
    before = files()
    with pytest.raises(SystemExit) as e:
        demo.main(["--output", str(out), "--steps", "1", "--n_videos", "2", "--no_progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--output {out} is not empty" in err and "choose a new --output" in err and "--resume" not in err
    assert files() == before


def test_demo_with_a_time_agnostic_vqvae_hands_windows_over_as_codes(tmp_path, capsys):
    """--temporal_padding replicate trains the VQ-VAE with it, and the long samples then default to the
    codes hand-over (said in the report)."""
    out = tmp_path / "demo"
    assert demo.main(["--output", str(out), "--steps", "2", "--gpt_steps", "1", "--n_videos", "8", "--n_samples", "1",
                      "--no_progress", "--frames", "10", "--temporal_padding", "replicate"]) == 0
    assert load_vqvae(out / "vqvae" / "last.ckpt").temporal_padding == "replicate"
    import json
    assert json.loads((out / "summary.json").read_text())["long_video"]["handover"] == "codes"
    assert "latent frames, codes)" in capsys.readouterr().out


def test_frame_strip_of_a_long_video_keeps_every_kth_frame(tmp_path):
    """At most 64 columns: a 130-frame video shows every 3rd frame (44 columns); the first 4 videos only."""
    video = torch.rand(5, 3, 130, 8, 8)
    demo._save_frame_strip(video, tmp_path / "s.png")
    img = torch.from_numpy(np.array(Image.open(tmp_path / "s.png"))).float() / 255
    assert img.shape == (4 * 8 * 3, 44 * 8 * 3, 3)
    expected = video[:4, :, ::3].permute(0, 3, 2, 4, 1).reshape(4 * 8, 44 * 8, 3)
    assert torch.allclose(img[::3, ::3], expected, atol=1 / 255)


@pytest.mark.parametrize("flag", ["--steps", "--gpt_steps", "--n_videos", "--n_samples", "--lr"])
def test_bad_demo_arguments(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main([flag, "0", "--output", str(tmp_path / "d")])
    assert e.value.code == 2  # argparse's usage error, before any work
    assert f"argument {flag}: must be a positive" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        demo.main(["-h"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: 600)" in text and "(default: ./demo_output)" in text and "``" not in text


def test_demo_frames_must_exceed_the_trained_length(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--frames", "8", "--output", str(tmp_path / "d")])
    assert e.value.code == 2 and "--frames: must exceed the trained 8 frames" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_handover_needs_frames(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--handover", "codes", "--output", str(tmp_path / "d")])
    assert e.value.code == 2 and "--handover: only used with --frames" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_foreground_area_is_the_shape_area():
    import torch
    v = torch.zeros(2, 3, 3, 10, 10)
    v[0, 1, :, 2:6, 3:8] = 0.9  # 4 x 5 green rectangle in every frame
    v[1, :, 1, :, :] = 0.2  # dim grey frame: below the threshold
    area = demo.foreground_area(v)
    assert area.shape == (2, 3)
    assert torch.equal(area, torch.tensor([[0.2, 0.2, 0.2], [0.0, 0.0, 0.0]]))


def test_long_video_report_samples_with_the_given_context():
    """long_video_report(context_frames=C) samples and measures what gpt.sample(context_frames=C) gives
    for the same seed (14 frames = 7 latent frames: context 1 and the default 2 place other windows)."""
    import argparse
    import torch
    from videogpt_fast.gpt import VideoGPT
    from videogpt_fast.vqvae import VQVAE
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        vq = VQVAE(argparse.Namespace(embedding_dim=8, n_codes=16, n_hiddens=8, n_res_layers=1, downsample=[2, 8, 8],
                                      sequence_length=demo.SEQUENCE_LENGTH, resolution=demo.RESOLUTION))
        gpt = VideoGPT(dict(vqvae="unused", n_cond_frames=0, class_cond=False, hidden_dim=24, heads=2, layers=1,
                            dropout=0.0, attn_type="full", attn_dropout=0.0), vqvae=vq).eval()
        with torch.no_grad():
            gpt.fc_out.weight.normal_(std=0.5)
        reports = {c: demo.long_video_report(gpt, 14, 2, seed=3, n_real=2, context_frames=c) for c in (None, 1)}
        want = gpt.sample(2, latent_frames=7, generator=torch.Generator().manual_seed(3), progress=False,
                          context_frames=1)[:, :, :14]
    finally:
        torch.set_num_threads(threads)
    assert reports[None]["context_frames"] == 2 and reports[1]["context_frames"] == 1
    assert torch.equal(reports[1]["samples"], want) and not torch.equal(reports[None]["samples"], want)
    assert reports[1]["area_per_window"] == [round(float(demo.foreground_area(want[:, :, i:i + 8]).mean()), 4)
                                             for i in (0, 8)]


@pytest.mark.parametrize("argv, message", [
    (["--context_frames", "1"], "--context_frames: only used with --frames"),
    (["--frames", "16", "--context_frames", "4"], "--context_frames: must be in [0, 3]"),
    (["--frames", "16", "--context_frames", "-1"], "--context_frames: must be in [0, 3]"),
])
def test_demo_context_frames_is_checked(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        demo.main([*argv, "--output", str(tmp_path / "d")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
