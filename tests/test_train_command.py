"""The train command (videogpt_fast.train.command): one-line errors, exit status 2, the output lock."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import TRAIN_GPT_FLAGS as GPT_FLAGS, TRAIN_VQ_FLAGS as VQ_FLAGS, set_flag
from videogpt_fast import train
from videogpt_fast.checkpoint import safe_load
from videogpt_fast.data.synthetic import write_hdf5


def test_clear_errors(shapes_hdf5, tiny_vqvae_ckpt, tmp_path, capsys):
    assert train.main(["vqvae", "--data_path", str(tmp_path / "missing.hdf5"), *VQ_FLAGS,
                       "--output", str(tmp_path / "a")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = write_hdf5(tmp_path / "empty.hdf5", n_train=0, n_test=0, frames_per_video=10, resolution=16)
    assert train.main(["vqvae", "--data_path", empty, *VQ_FLAGS, "--output", str(tmp_path / "b")]) == 2
    assert "empty" in capsys.readouterr().err
    bad = set_flag(GPT_FLAGS, "sequence_length", "8")  # the VQ-VAE was trained on 4 frames
    assert train.main(["gpt", "--data_path", shapes_hdf5, *bad, "--vqvae", tiny_vqvae_ckpt, "--max_steps", "2",
                       "--output", str(tmp_path / "c")]) == 2
    assert "latent shape" in capsys.readouterr().err
    assert train.main(["gpt", "--data_path", shapes_hdf5, *GPT_FLAGS, "--vqvae", tiny_vqvae_ckpt,
                       "--output", str(tmp_path / "d")]) == 2
    assert "--max_steps is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["nonsense"])


def test_loader_dali_without_cuda_is_a_clear_error(labelled_video_folder, tmp_path, capsys):
    assert train.main(["vqvae", "--data_path", labelled_video_folder, *VQ_FLAGS, "--loader", "dali", "--device", "cpu",
                       "--output", str(tmp_path)]) == 2
    assert "--loader dali decodes on the GPU: it needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["notes.txt", "clip.mp4"])
def test_data_path_file_that_is_not_hdf5(name, tmp_path, capsys):
    from videogpt_fast.data.synthetic import smooth_frames, write_video_file
    path = tmp_path / name
    if name.endswith(".mp4"):
        write_video_file(str(path), smooth_frames(4, 16, 16))
    else:
        path.write_text("not a dataset\n")
    assert train.main(["vqvae", "--data_path", str(path), *VQ_FLAGS, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and repr(str(path)) in err and "not an HDF5 file" in err
    assert "train/ and test/" in err and "train_data, train_idx, test_data and test_idx" in err
    assert "Traceback" not in err


def test_output_lock_and_fresh_output(shapes_hdf5, tmp_path, capsys):
    from videogpt_fast.run_dir import LOCK_NAME, OutputLock
    out = tmp_path / "run"
    argv = ["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "1", "--val_every", "-1",
            "--output", str(out)]
    with OutputLock(out):  # another training holds the folder
        assert train.main(argv) == 2
        err = capsys.readouterr().err
        assert f"--output {out} is in use by another training (pid {os.getpid()} on host" in err
        assert err.count("\n") == 1
    assert not (set(os.listdir(out)) - {LOCK_NAME})  # the refused run wrote nothing
    assert train.main(argv) == 0
    assert OutputLock(out).acquire().release() is None  # released at the end of the run
    assert train.main(argv) == 2  # a second fresh run into the same folder
    err = capsys.readouterr().err
    assert f"--output {out} is not empty" in err and "--resume auto" in err and err.count("\n") == 1
    before = safe_load(out / "last.ckpt")["global_step"]
    assert before == 1  # untouched
    (tmp_path / "file").write_text("x")
    assert train.main(argv[:-1] + [str(tmp_path / "file")]) == 2
    assert f"--output {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


def test_disk_full_while_training_saves(shapes_hdf5, tmp_path, monkeypatch, capsys):
    import errno

    def full(obj, f, *a, **k):
        f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "o"
    assert train.main(["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "1", "--val_every", "-1",
                       "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"could not write {out / 'epoch=0-step=1.ckpt'}: No space left on device" in err
    assert err.count("\n") == 1 and not list(out.glob("*.ckpt")) and not list(out.glob(".*tmp*"))


def test_a_prior_too_big_for_memory_is_refused_before_it_is_built(shapes_hdf5, tiny_vqvae_ckpt, tmp_path, capsys):
    """Attack: --layers 10**8 used to build 10**8 layers for hours; now a one-line error up front."""
    argv = ["gpt", "--data_path", shapes_hdf5, *set_flag(GPT_FLAGS, "layers", str(10 ** 8)), "--vqvae", tiny_vqvae_ckpt,
            "--max_steps", "1", "--output", str(tmp_path / "o")]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: the prior would have" in err and "lower --hidden_dim or --layers" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_out_of_memory_is_one_line(shapes_hdf5, tmp_path, capsys, monkeypatch):
    def oom(self):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 480000000000 bytes. Error code 12")
    monkeypatch.setattr(train.Trainer, "fit", oom)
    assert train.main(["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "1", "--output",
                       str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error: out of memory (" in err and "lower --batch_size, --resolution" in err and err.count("\n") == 1
    monkeypatch.setattr(train.Trainer, "fit", lambda self: (_ for _ in ()).throw(RuntimeError("other bug")))
    with pytest.raises(RuntimeError, match="other bug"):  # only allocation failures are turned into a message
        train.main(["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "1", "--output", str(tmp_path / "p")])


def test_output_under_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "f").write_text("user data")
    with pytest.raises(ValueError, match=r"--output .*f/run: cannot create the folder \(Not a directory\)"):
        from videogpt_fast.run_dir import OutputLock
        OutputLock(tmp_path / "f" / "run").acquire()
    assert (tmp_path / "f").read_text() == "user data"


def test_class_cond_with_unlabeled_test_files_fails_up_front(tiny_vqvae_ckpt, tmp_path, capsys):
    """Attack: a file directly in test/ (label -1) crashed validation in F.one_hot after training began."""
    from videogpt_fast.data.synthetic import smooth_frames, write_video_file
    root = tmp_path / "videos"
    for rel, seed in [("train/cats/a.mp4", 0), ("train/dogs/b.mp4", 1), ("test/loose.mp4", 2)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(root / rel), smooth_frames(6, 16, 16, seed=seed))
    out = tmp_path / "gpt"
    assert train.main(["gpt", "--data_path", str(root), *GPT_FLAGS, "--vqvae", tiny_vqvae_ckpt, "--class_cond",
                       "--max_steps", "2", "--device", "cpu", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--class_cond: 1 video file(s) directly in" in err and "test have no class" in err
    assert not list(out.glob("*.ckpt"))


def test_unusable_backend_in_the_environment_is_one_line(shapes_hdf5, tmp_path, capsys, monkeypatch):
    """VIDEOGPT_FAST_BACKEND=triton on CPU without the interpreter raises BackendUnavailableError (a
    RuntimeError), which went past the one-line handler as a traceback (exit status 1)."""
    monkeypatch.setenv("VIDEOGPT_FAST_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    argv = ["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "1", "--device", "cpu",
            "--output", str(tmp_path / "run")]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("videogpt-fast train vqvae: error: VIDEOGPT_FAST_BACKEND=triton requested for"), err
