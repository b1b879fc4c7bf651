"""The demo, drastically shortened: it writes valid reconstruction and sample videos and a loss plot."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import decode_video
from PIL import Image

from videogpt_fast import demo
from videogpt_fast.checkpoint import load_videogpt, load_vqvae
from videogpt_fast.synthetic import MovingShapesDataset, moving_shapes




def test_short_demo_writes_videos_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--output", str(out), "--steps", "3", "--gpt_steps", "2", "--n_videos", "16",
                      "--n_samples", "2", "--no_progress", "--frames", "11"]) == 0
    printed = capsys.readouterr().out
    # --frames: a long sample of 11 frames (6 latent frames, two windows) and its coherence report
    assert decode_video(out / "long_samples.mp4").shape[0] == decode_video(out / "long_samples.gif").shape[0] == 11
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


def test_bad_demo_arguments():
    with pytest.raises(SystemExit):
        demo.main(["--steps", "0"])
    with pytest.raises(SystemExit, match="--frames must exceed the trained 8 frames"):
        demo.main(["--frames", "8"])


def test_foreground_area_is_the_shape_area():
    import torch
    v = torch.zeros(2, 3, 3, 10, 10)
    v[0, 1, :, 2:6, 3:8] = 0.9  # 4 x 5 green rectangle in every frame
    v[1, :, 1, :, :] = 0.2  # dim grey frame: below the threshold
    area = demo.foreground_area(v)
    assert area.shape == (2, 3)
    assert torch.equal(area, torch.tensor([[0.2, 0.2, 0.2], [0.0, 0.0, 0.0]]))


def test_synthetic_videos_move_and_are_deterministic():
    v = moving_shapes(3, 8, 32, seed=1)
    assert v.shape == (3, 8, 32, 32, 3) and v.dtype == np.uint8
    assert np.array_equal(v, moving_shapes(3, 8, 32, seed=1))
    assert not np.array_equal(v[:, 0], v[:, -1])  # the shapes move
    ds = MovingShapesDataset(2, 8, 32)
    item = ds[1]
    assert tuple(item["video"].shape) == (3, 8, 32, 32)
    assert -0.5 <= float(item["video"].min()) and float(item["video"].max()) <= 0.5
    assert item["label"] in (0, 1) and ds.n_classes == 2
