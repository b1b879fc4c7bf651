"""The videogpt-fast CLI: -h of every subcommand, sample / reconstruct / encode / fvd end to end."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import decode_video
import torch
import torch.nn as nn

from videogpt_fast import cli
from videogpt_fast.checkpoint import save_checkpoint
from videogpt_fast.data.synthetic import moving_shapes
from videogpt_fast.utils import write_video

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["train", "demo", "sample", "continue", "reconstruct", "encode", "fvd"]




@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from videogpt_fast.gpt import VideoGPT
    from videogpt_fast.vqvae import VQVAE
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vq = VQVAE(argparse.Namespace(embedding_dim=8, n_codes=16, n_hiddens=16, n_res_layers=1, downsample=[2, 4, 4],
                                  sequence_length=4, resolution=16))
    vq_path = d / "vq.ckpt"
    save_checkpoint(vq_path, vq)
    gpt = VideoGPT(argparse.Namespace(vqvae=str(vq_path), n_cond_frames=0, class_cond=False, hidden_dim=24, heads=2,
                                      layers=1, dropout=0.0, attn_type="full", attn_dropout=0.0, resolution=16,
                                      sequence_length=4), vqvae=vq)
    gpt_path = d / "gpt.ckpt"
    save_checkpoint(gpt_path, gpt)
    return vq, vq_path, gpt_path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    for i, v in enumerate(moving_shapes(3, 8, 24, seed=7)):
        write_video(v, str(d / f"v{i}.mp4"))
    return d


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "-h"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage" in text.lower()
    # what the subcommand does is said atop its own -h (not only in `videogpt-fast -h`), without rST backticks
    description = text.split("\n\n")[1]
    assert not description.startswith(("options:", "positional arguments:")) and "``" not in text


def test_train_stage_help_and_top_level(capsys):
    for argv in (["train", "vqvae", "-h"], ["train", "gpt", "-h"], ["-h"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data_path", "--n_codes", "--vqvae", "--attn_type", "--precision", "--resume", "--loader"):
        assert flag in out
    for command in SUBCOMMANDS:
        assert command in out


def test_console_entry_point_runs_as_module():
    r = subprocess.run([sys.executable, "-m", "videogpt_fast", "sample", "-h"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--ckpt" in r.stdout


def test_sample_writes_a_video_grid(models, tmp_path):
    _, _, gpt_path = models
    for ext in ("mp4", "gif"):
        out = tmp_path / f"s.{ext}"
        assert cli.main(["sample", "--ckpt", str(gpt_path), "--n", "2", "--output", str(out), "--device", "cpu"]) == 0
        if ext == "mp4":
            frames = decode_video(str(out))
            assert frames.shape[0] == 4 and frames.shape[-1] == 3  # 4 frames of a 2-video grid
        else:
            assert out.stat().st_size > 0


def test_reconstruct_side_by_side(models, videos, tmp_path, capsys):
    _, vq_path, _ = models
    out = tmp_path / "r.mp4"
    assert cli.main(["reconstruct", str(videos / "v0.mp4"), "--vqvae", str(vq_path), "--output", str(out),
                     "--device", "cpu"]) == 0
    frames = decode_video(str(out))
    # one video of 4 frames, input and reconstruction side by side (16 + 16 wide, 1-pixel padding)
    assert frames.shape[0] == 4 and frames.shape[2] >= 2 * frames.shape[1] - 4
    assert "reconstruction MSE" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_encode_matches_the_model(models, videos, tmp_path, suffix):
    from videogpt_fast.data.preprocess import preprocess
    vq, vq_path, _ = models
    out = tmp_path / f"codes{suffix}"
    assert cli.main(["encode", str(videos), "--vqvae", str(vq_path), "--output", str(out), "--batch_size", "2",
                     "--device", "cpu", "--no_progress"]) == 0
    if suffix == ".pt":
        saved = torch.load(out, weights_only=True)
        codes, files = saved["codes"], saved["files"]
    else:
        z = np.load(out)
        codes, files = torch.from_numpy(z["codes"]), list(z["files"])
        saved = {k: z[k].item() for k in ("vqvae", "sequence_length", "resolution")}
        assert tuple(z["latent_shape"]) == (2, 4, 4)
    assert saved["vqvae"] == str(vq_path) and (saved["sequence_length"], saved["resolution"]) == (4, 16)
    assert codes.shape == (3, 2, 4, 4) and codes.dtype == torch.int64
    assert [Path(f).name for f in files] == ["v0.mp4", "v1.mp4", "v2.mp4"]
    x = preprocess(torch.from_numpy(decode_video(str(videos / "v1.mp4"))[:4]), 16).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(vq.eval().encode(x)[0], codes[1])


def test_encode_skips_and_counts_unreadable_or_short_videos(models, videos, tmp_path, capsys):
    """One corrupt or too-short file does not abort a folder: it is skipped, said and listed (as training
    skips and counts it); a folder with nothing encodable is a one-line error."""
    import shutil
    vq, vq_path, _ = models
    folder = tmp_path / "in"
    shutil.copytree(videos, folder)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    write_video(moving_shapes(1, 2, 24, seed=3)[0], str(folder / "short.mp4"))  # 2 frames < sequence_length 4
    out = tmp_path / "codes.pt"
    assert cli.main(["encode", str(folder), "--vqvae", str(vq_path), "--output", str(out), "--batch_size", "2",
                     "--device", "cpu", "--no_progress"]) == 0
    saved = torch.load(out, weights_only=True)
    assert [Path(f).name for f in saved["files"]] == ["v0.mp4", "v1.mp4", "v2.mp4"]
    assert sorted(Path(f).name for f in saved["skipped"]) == ["broken.mp4", "short.mp4"]
    assert saved["codes"].shape == (3, 2, 4, 4)
    captured = capsys.readouterr()
    assert captured.err.count("skipped") == 2 and "skipped 2" in captured.out
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / "broken.mp4", bad / "broken.mp4")
    assert cli.main(["encode", str(bad), "--vqvae", str(vq_path), "--output", str(tmp_path / "none.pt"),
                     "--device", "cpu", "--no_progress"]) == 2
    assert "none of the 1 video files could be encoded" in capsys.readouterr().err
    assert not (tmp_path / "none.pt").exists()


def test_errors_are_clear(models, tmp_path, capsys):
    _, vq_path, _ = models
    assert cli.main(["reconstruct", str(tmp_path / "none.mp4"), "--vqvae", str(vq_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["encode", str(tmp_path), "--vqvae", str(vq_path), "--output", str(tmp_path / "c.pt")]) == 2
    assert "no video files" in capsys.readouterr().err
    assert cli.main(["fvd", "--real", str(tmp_path), "--fake", str(tmp_path), "--i3d",
                     str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


class _TinyI3D(nn.Module):
    """Stand-in for I3D (400 logits) so the FVD plumbing runs fast on CPU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 4 * 4 * 4, 400)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool3d(x, 4).flatten(1))


def test_fvd_between_folders(videos, tmp_path, monkeypatch, capsys):
    import videogpt_fast.fvd as fvd_mod
    monkeypatch.setattr(fvd_mod, "load_i3d_pretrained", lambda path=None, device="cpu": _TinyI3D())
    other = tmp_path / "fake"
    other.mkdir()
    for i, v in enumerate(moving_shapes(3, 8, 32, seed=99)):
        write_video(v[:, :, :, ::-1].copy(), str(other / f"f{i}.mp4"))
    assert cli.main(["fvd", "--real", str(videos), "--fake", str(videos), "--sequence_length", "8",
                     "--device", "cpu"]) == 0
    same = float(capsys.readouterr().out.split()[1])
    assert cli.main(["fvd", "--real", str(videos), "--fake", str(other), "--sequence_length", "8",
                     "--device", "cpu"]) == 0
    different = float(capsys.readouterr().out.split()[1])
    assert abs(same) < 0.05 and different > 20 * max(abs(same), 0.01)
    # a folder of mixed sizes is refused without --resolution, accepted with it
    write_video(moving_shapes(1, 8, 24, seed=3)[0], str(other / "small.mp4"))
    assert cli.main(["fvd", "--real", str(videos), "--fake", str(other), "--sequence_length", "8",
                     "--device", "cpu"]) == 2
    assert "--resolution" in capsys.readouterr().err
    assert cli.main(["fvd", "--real", str(videos), "--fake", str(other), "--sequence_length", "8",
                     "--resolution", "24", "--device", "cpu"]) == 0


# ----------------------------------------------------------------------------------------------
# issue 15: bad checkpoints, flags, outputs, help
# ----------------------------------------------------------------------------------------------
from conftest import BAD_KINDS, write_bad_checkpoint  # noqa: E402


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_checkpoint_is_one_line_exit_2(kind, videos, tmp_path, capsys):
    bad = write_bad_checkpoint(kind, tmp_path / "r.ckpt")
    for argv in (["reconstruct", str(videos / "v0.mp4"), "--vqvae", str(bad)], ["sample", "--ckpt", str(bad)],
                 ["encode", str(videos), "--vqvae", str(bad)]):
        assert cli.main(argv + ["--output", str(tmp_path / ("o.pt" if argv[0] == "encode" else "o.mp4")),
                                "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"videogpt-fast {argv[0]}: error: ") and str(bad) in err
        assert "Traceback" not in err and "weights_only" not in err and "see below" not in err
    assert not list(tmp_path.glob("o.*"))


def test_random_bytes_checkpoint_in_a_real_process(videos, tmp_path):
    bad = write_bad_checkpoint("random", tmp_path / "r.ckpt")
    r = subprocess.run([sys.executable, "-m", "videogpt_fast.cli", "reconstruct", "--vqvae", str(bad),
                        str(videos / "v0.mp4"), "--output", str(tmp_path / "o.mp4")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(bad) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "KeyError" not in r.stderr


@pytest.mark.parametrize("argv, flag", [
    (["sample", "--ckpt", "x", "--fps", "0"], "--fps"),
    (["sample", "--ckpt", "x", "--n", "0"], "--n"),
    (["reconstruct", "v.mp4", "--vqvae", "x", "--start", "-1"], "--start"),
    (["reconstruct", "v.mp4", "--vqvae", "x", "--fps", "-5"], "--fps"),
    (["encode", "v.mp4", "--vqvae", "x", "--batch_size", "0"], "--batch_size"),
    (["encode", "v.mp4", "--vqvae", "x", "--sequence_length", "0"], "--sequence_length"),
    (["fvd", "--real", "a", "--fake", "b", "--resolution", "0"], "--resolution"),
    (["sample", "--ckpt", "x", "--seed", str(10 ** 23)], "--seed"),
    (["sample", "--ckpt", "x", "--device", "banana"], "--device"),
    (["encode", "v.mp4", "--vqvae", "x", "--device", "gpu0"], "--device"),
    (["sample", "--ckpt", "x", "--frames", "0"], "--frames"),
    (["sample", "--ckpt", "x", "--context_frames", "-1"], "--context_frames"),
    (["continue", "--ckpt", "x", "--video", "v.mp4", "--frames", "-3"], "--frames"),
    (["continue", "--ckpt", "x", "--video", "v.mp4", "--frames", "8", "--context_frames", "0"], "--context_frames"),
    (["continue", "--ckpt", "x", "--video", "v.mp4", "--frames", "8", "--n", "0"], "--n"),
])
def test_flags_are_checked_up_front(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: must be" in err and "Traceback" not in err


def test_output_is_validated_before_any_model_work(models, videos, tmp_path, monkeypatch, capsys):
    import videogpt_fast.checkpoint as ckpt_mod
    _, vq_path, gpt_path = models
    loaded = []
    for name in ("load_vqvae", "load_videogpt"):
        monkeypatch.setattr(ckpt_mod, name, lambda *a, _n=name, **k: loaded.append(_n))
    (tmp_path / "file").write_text("x")
    cases = [
        (["sample", "--ckpt", str(gpt_path), "--output", str(tmp_path / "s.avi")], "unsupported extension '.avi'; "
                                                                                   "supported: .mp4, .gif"),
        (["reconstruct", str(videos / "v0.mp4"), "--vqvae", str(vq_path), "--output", str(tmp_path / "r.webm")],
         "supported: .mp4, .gif"),
        (["encode", str(videos), "--vqvae", str(vq_path), "--output", str(tmp_path / "c.mp4")],
         "supported: .pt, .npz"),
        (["sample", "--ckpt", str(gpt_path), "--output", str(tmp_path / "file" / "s.mp4")], "is not a folder"),
        (["sample", "--ckpt", str(gpt_path), "--output", str(tmp_path)], "is a folder"),
    ]
    for argv, message in cases:
        assert cli.main(argv + ["--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    monkeypatch.setattr("videogpt_fast.argtypes.os.access", lambda path, mode: False)  # root ignores chmod
    assert cli.main(["sample", "--ckpt", str(gpt_path), "--output", str(tmp_path / "new" / "s.gif")]) == 2
    assert f"folder {tmp_path} is not writable" in capsys.readouterr().err
    assert loaded == []  # no model was loaded (let alone sampled) for any of them


def test_full_disk_leaves_no_partial_video(models, videos, tmp_path, monkeypatch, capsys):
    import errno
    import videogpt_fast.utils as utils
    _, vq_path, _ = models

    def full_disk(frames, fname, fps=5):
        Path(fname).write_bytes(b"\x00" * 100)  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils, "write_video", full_disk)
    out = tmp_path / "r.mp4"
    assert cli.main(["reconstruct", str(videos / "v0.mp4"), "--vqvae", str(vq_path), "--output", str(out),
                     "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"could not write {out}: No space left on device" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary file


def test_sample_no_progress(models, tmp_path, capsys):
    _, _, gpt_path = models
    argv = ["sample", "--ckpt", str(gpt_path), "--n", "1", "--output", str(tmp_path / "s.gif"), "--device", "cpu"]
    assert cli.main(argv) == 0
    assert "sampling" in capsys.readouterr().err  # the tqdm bar
    assert cli.main(argv + ["--no_progress"]) == 0
    assert "sampling" not in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["s.gif"]  # the temporary file was renamed


def test_help_shows_defaults_and_no_backticks(capsys):
    for argv in (["sample", "-h"], ["train", "gpt", "-h"], ["-h"], ["train", "-h"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
    out = capsys.readouterr().out
    sample_help, gpt_help, top_help, train_help = out.split("usage: ")[1:]
    assert "(default: 5)" in " ".join(sample_help.split()) and "--no_progress" in sample_help
    gpt_help = " ".join(gpt_help.split())
    assert "download" not in gpt_help.replace("never downloaded", "") and "never downloaded" in gpt_help
    assert "--lr LR default: 0.0003" in gpt_help and "(default: 100)" in gpt_help
    assert "`" not in top_help and "`" not in train_help


def test_sample_conditions_on_random_test_clips(models, tmp_path, monkeypatch, capsys):
    """A class-conditional prior is conditioned on clips drawn at random (seeded by --seed) from the
    test split, as the original's shuffled test loader, not always its first clips (one video)."""
    from videogpt_fast.gpt import VideoGPT
    vq, vq_path, _ = models
    root = tmp_path / "data"
    for split, n in (("train", 1), ("test", 2)):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i, v in enumerate(moving_shapes(n, 8, 16, seed=10 * c)):
                write_video(v, str(root / split / cls / f"{i}.mp4"))
    gpt = VideoGPT(argparse.Namespace(vqvae=str(vq_path), n_cond_frames=0, class_cond=True, class_cond_dim=2,
                                      hidden_dim=24, heads=2, layers=1, dropout=0.0, attn_type="full",
                                      attn_dropout=0.0, resolution=16, sequence_length=4, data_path=str(root)),
                   vqvae=vq)
    save_checkpoint(tmp_path / "c.ckpt", gpt)
    labels = []

    def fake_sample(self, n, batch=None, **kwargs):  # the draw itself is tested elsewhere
        labels.append(tuple(batch["label"].tolist()))
        return torch.zeros(n, 3, 4, 16, 16)

    monkeypatch.setattr(VideoGPT, "sample", fake_sample)
    for seed in range(6):
        assert cli.main(["sample", "--ckpt", str(tmp_path / "c.ckpt"), "--n", "2", "--seed", str(seed), "--device",
                         "cpu", "--no_progress", "--output", str(tmp_path / "s.gif")]) == 0
    printed = capsys.readouterr().out
    assert "conditioning on test clips" in printed and "with labels ['" in printed
    assert len(set(labels)) > 1  # the first 2 clips (both from test/cat/0.mp4) would always give (0, 0)
    assert {lab for pair in labels for lab in pair} == {0, 1}


def test_out_of_memory_is_one_line_exit_2(models, videos, tmp_path, capsys, monkeypatch):
    """Attack (issue 15 follow-up): --resolution 100000 or --n 10**8 ended in the CPU allocator's traceback."""
    _, vq_path, _ = models

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 480000000000 bytes. Error code 12")
    monkeypatch.setattr(cli, "_clip", oom)
    assert cli.main(["reconstruct", str(videos / "v0.mp4"), "--vqvae", str(vq_path), "--output",
                     str(tmp_path / "r.mp4"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("videogpt-fast reconstruct: error: out of memory (") and err.count("\n") == 1


def test_fvd_with_a_model_checkpoint_as_i3d_is_one_line(models, videos, capsys):
    _, vq_path, _ = models
    assert cli.main(["fvd", "--real", str(videos), "--fake", str(videos), "--i3d", str(vq_path),
                     "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "vq.ckpt is not the I3D network's state dict" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# longer videos and continuation (issue 16); the tiny prior has T = 2 latent frames, downsample_t 2
@pytest.mark.parametrize("decode, handover", [("one_pass", "reencode"), ("windows", "reencode"), ("windows", "codes")])
def test_sample_frames_writes_a_long_video(models, tmp_path, decode, handover, capsys):
    _, _, gpt_path = models
    out = tmp_path / "long.mp4"
    assert cli.main(["sample", "--ckpt", str(gpt_path), "--n", "2", "--frames", "11", "--output", str(out),
                     "--device", "cpu", "--decode", decode, "--handover", handover]) == 0
    assert decode_video(str(out)).shape[0] == 11  # 6 latent frames sampled in 5 windows, cut to 11 frames
    assert "window 5/5" in capsys.readouterr().err  # the progress bar names the windows


def test_sample_context_frames_checked_against_the_prior(models, tmp_path, capsys):
    """--context_frames must leave each window something to sample: the CLI names its flag and range
    (T = 2 latent frames here), with or without --frames."""
    _, _, gpt_path = models
    out = tmp_path / "s.mp4"
    for extra in ([], ["--frames", "11"]):
        assert cli.main(["sample", "--ckpt", str(gpt_path), "--n", "1", "--output", str(out), "--device", "cpu",
                         "--no_progress", "--context_frames", "2", *extra]) == 2
        err = capsys.readouterr().err
        assert "--context_frames 2: must be in [0, 1] (the prior has T=2 latent frames)" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.fixture(scope="module")
def cond_priors(models, tmp_path_factory) -> dict:
    """Tiny priors over the models fixture's VQ-VAE: frame-conditional (one conditioning frame) and
    class-conditional (3 classes)."""
    from videogpt_fast.gpt import VideoGPT
    vq, vq_path, _ = models
    paths = {}
    for name, kw in (("frame_conditional", dict(n_cond_frames=1, class_cond=False)),
                     ("class_conditional", dict(n_cond_frames=0, class_cond=True, class_cond_dim=3))):
        torch.manual_seed(1)
        gpt = VideoGPT(argparse.Namespace(vqvae=str(vq_path), hidden_dim=24, heads=2, layers=1, dropout=0.0,
                                          attn_type="full", attn_dropout=0.0, resolution=16, sequence_length=4, **kw),
                       vqvae=vq)
        paths[name] = tmp_path_factory.mktemp(name) / "gpt.ckpt"
        save_checkpoint(paths[name], gpt)
    return paths


@pytest.mark.parametrize("prior", ["unconditional", "frame_conditional", "class_conditional"])
def test_continue_writes_the_requested_length(models, cond_priors, videos, tmp_path, prior, monkeypatch, capsys):
    from videogpt_fast.gpt import VideoGPT
    ckpt = models[2] if prior == "unconditional" else cond_priors[prior]
    calls = []
    real_sample_codes = VideoGPT.sample_codes

    def spy(self, n, batch=None, **kw):
        codes = real_sample_codes(self, n, batch, **kw)
        calls.append((self, batch, kw, codes))
        return codes

    monkeypatch.setattr(VideoGPT, "sample_codes", spy)
    out = tmp_path / "cont.mp4"
    label = ["--label", "2"] if prior == "class_conditional" else []
    assert cli.main(["continue", "--ckpt", str(ckpt), "--video", str(videos / "v0.mp4"), "--frames", "7",
                     "--n", "2", "--output", str(out), "--device", "cpu", "--no_progress", *label]) == 0
    assert decode_video(str(out)).shape[0] == 7
    assert "continued the first 2 frames" in capsys.readouterr().out
    (gpt, batch, kw, codes), = calls
    assert codes.shape == (2, 4, 4, 4) and kw["latent_frames"] == 4 and kw["context_frames"] == 1
    clip = cli._clip(str(videos / "v0.mp4"), 2, 16).unsqueeze(0)
    with torch.no_grad():
        clip_codes = gpt.vqvae.encode(clip)
    assert torch.equal(codes[:, :1], clip_codes.expand(2, -1, -1, -1))  # the clip's own first latent frame
    if prior == "frame_conditional":  # the clip's first frame conditions the prior
        assert torch.equal(batch["video"][:, :, :1], clip[:, :, :1].expand(2, -1, -1, -1, -1))
    elif prior == "class_conditional":
        assert batch["label"].tolist() == [2, 2]
    else:
        assert batch is None


def test_continue_errors_exit_2(models, videos, tmp_path, capsys):
    _, _, gpt_path = models
    base = ["continue", "--ckpt", str(gpt_path), "--video", str(videos / "v0.mp4"), "--device", "cpu",
            "--output", str(tmp_path / "c.mp4")]
    for argv, message in [
        (base + ["--frames", "2"], "--frames 2: must exceed the 2 frames taken from the clip"),
        (base + ["--frames", "9", "--context_frames", "2"], "--context_frames 2: must be in [1, 1]"),
        (base + ["--frames", "9", "--label", "1"], "--label: this prior is not class-conditional"),
        (["continue", "--ckpt", str(gpt_path), "--video", str(tmp_path / "none.mp4"), "--frames", "9"],
         "no such file"),
        (base[:-1] + [str(tmp_path / "c.avi"), "--frames", "9"], "unsupported extension"),
        # a clip too short from --start: says why that many frames (not a sequence_length the user never gave)
        (base + ["--frames", "9", "--start", "7"],
         "has 1 frames from frame 7; need 2 (--context_frames 1 x temporal downsample 2)"),
    ]:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_huge_frames_are_refused_before_sampling(models, videos, tmp_path, capsys, monkeypatch):
    """--frames whose decoded pixels cannot fit in the device's memory is a one-line error before any
    sampling (it sampled for hours, or hung listing 10^22 windows, before the allocation failed)."""
    from videogpt_fast import sample as S
    _, _, gpt_path = models

    def never(*a, **k):
        raise AssertionError("sampling started")

    monkeypatch.setattr(S, "latent_windows", never)
    out = str(tmp_path / "h.mp4")
    for argv in (["sample", "--ckpt", str(gpt_path), "--frames", str(10 ** 23)],
                 ["sample", "--ckpt", str(gpt_path), "--n", str(10 ** 12)],
                 ["continue", "--ckpt", str(gpt_path), "--video", str(videos / "v0.mp4"), "--frames", str(10 ** 12)]):
        assert cli.main([*argv, "--device", "cpu", "--no_progress", "--output", out]) == 2
        err = capsys.readouterr().err
        assert "GiB as float32 pixels, more than the" in err and "lower --frames or --n" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_unusable_backend_in_the_environment_is_one_line(models, tmp_path, capsys, monkeypatch):
    """VIDEOGPT_FAST_BACKEND=cuda for a CPU run raises BackendUnavailableError (a RuntimeError), which
    went past the one-line handler as a traceback (exit status 1)."""
    monkeypatch.setenv("VIDEOGPT_FAST_BACKEND", "cuda")
    _, _, gpt_path = models
    assert cli.main(["sample", "--ckpt", str(gpt_path), "--device", "cpu", "--no_progress",
                     "--output", str(tmp_path / "s.mp4")]) == 2
    err = capsys.readouterr().err
    assert "error: VIDEOGPT_FAST_BACKEND=cuda requested for decode_attention but" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_continue_from_a_too_short_clip_names_the_frames_needed(models, tmp_path, capsys):
    """The message named a --sequence_length that continue does not have."""
    _, _, gpt_path = models
    write_video(moving_shapes(1, 1, 24, seed=7)[0], str(tmp_path / "one.mp4"))
    assert cli.main(["continue", "--ckpt", str(gpt_path), "--video", str(tmp_path / "one.mp4"), "--frames", "8",
                     "--device", "cpu", "--no_progress", "--output", str(tmp_path / "c.mp4")]) == 2
    err = capsys.readouterr().err
    assert "one.mp4' has 1 frames from frame 0; need 2" in err and "sequence_length" not in err, err
