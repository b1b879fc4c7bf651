"""Training arguments (videogpt_fast.train.args): the parser, the up-front checks, complete_args."""
from __future__ import annotations

import os

import pytest

from conftest import TRAIN_GPT_FLAGS as GPT_FLAGS, TRAIN_VQ_FLAGS as VQ_FLAGS, set_flag, train_args
from videogpt_fast import train


def test_loader_help_describes_auto():
    text = " ".join(train.build_parser("vqvae").format_help().split())
    assert "auto: DALI for a video folder when a CUDA device and NVIDIA DALI are there, else the PyTorch " \
           "DataLoader" in text


@pytest.mark.parametrize("flags, flag", [
    (["--log_every", "0"], "--log_every"), (["--keep_checkpoints", "-1"], "--keep_checkpoints"),
    (["--num_workers", "-1"], "--num_workers"), (["--save_every", "-1"], "--save_every"),
    (["--lr", "0"], "--lr"), (["--limit_val_batches", "-1"], "--limit_val_batches"),
    (["--val_every", "-2"], "--val_every"), (["--max_steps", "0"], "--max_steps"),
    (["--gradient_clip_val", "-1"], "--gradient_clip_val"), (["--batch_size", "0"], "--batch_size"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2 ** 64)], "--seed"), (["--device", "banana"], "--device"),
    (["--device", "cuda:x"], "--device"),
])
def test_train_flags_are_checked_up_front(flags, flag, tmp_path, capsys):
    """Checked before anything else: the data path does not even exist, and nothing is written."""
    with pytest.raises(SystemExit) as e:
        train.main(["vqvae", "--data_path", str(tmp_path / "missing.hdf5"), *flags, "--output", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: must be" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_model_flags_are_checked_up_front(tmp_path, capsys):
    for flags, message in ((["--downsample", "3", "2", "2"], "powers of two"), (["--n_hiddens", "7"], "n_hiddens"),
                           (["--resolution", "18"], "divisible"), (["--heads", "0"], "argument --heads"),
                           (["--hidden_dim", "32", "--heads", "2"], "argument --hidden_dim: must be divisible by 3"),
                           (["--hidden_dim", "48", "--heads", "5"], "argument --hidden_dim: must be divisible by --heads 5"),
                           (["--n_res_layers", "1000000"], "GiB of memory of this device: lower --n_hiddens, "
                                                           "--n_res_layers"),
                           (["--n_hiddens", "100000000"], "the VQ-VAE would have")):
        with pytest.raises(SystemExit):
            train.main(["vqvae" if "--heads" not in flags else "gpt", "--data_path", "x", "--max_steps", "1", *flags])
        assert message in capsys.readouterr().err


def test_num_workers_default_follows_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert train.default_num_workers() == 2
    assert train.build_parser("vqvae").parse_args(["--data_path", "x"]).num_workers == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert train.default_num_workers() == 8


def test_train_without_a_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: the stage is required: vqvae or gpt" in err and err.count("\n") == 2  # usage + error


def test_complete_args_is_the_one_place_args_change(tiny_vqvae_ckpt, caplog):
    """Defaults that depend on the stage, the checkpoint's architecture on --resume (warned) and the
    classes of the data are all filled in by complete_args; check_args changes nothing."""
    import logging
    import types
    from videogpt_fast.checkpoint import safe_load

    vq = train_args("vqvae", ["--data_path", "-", *VQ_FLAGS])
    assert vq.max_steps is None
    train.args.check_args(vq)
    assert vq.max_steps is None  # checking changes nothing
    assert train.complete_args(vq, train_set=None) is vq
    assert vq.max_steps == train.VQVAE_MAX_STEPS == 200000 and vq.downsample == [2, 2, 2]

    gpt = train_args("gpt", ["--data_path", "-", *GPT_FLAGS, "--vqvae", "x.ckpt"])
    with pytest.raises(ValueError, match="--max_steps is required for the prior"):
        train.args.check_args(gpt)
    gpt.max_steps, gpt.class_cond = 5, True
    train.complete_args(gpt, types.SimpleNamespace(n_classes=3))
    assert gpt.class_cond_dim == 3
    with pytest.raises(ValueError, match="--class_cond needs a dataset with labels"):
        train.complete_args(gpt, train_set=[])

    # --resume: the architecture comes from the checkpoint, with a warning naming the flag
    ckpt = safe_load(tiny_vqvae_ckpt)
    vq = train_args("vqvae", ["--data_path", "-", *set_flag(VQ_FLAGS, "n_codes", "32"), "--max_steps", "9"])
    with caplog.at_level(logging.WARNING, logger="videogpt_fast.train"):
        train.complete_args(vq, None, ckpt)
    assert vq.n_codes == 16 and vq.max_steps == 9
    assert [r.getMessage() for r in caplog.records] == [
        "--resume: n_codes=16 from the checkpoint (command line had 32)"]


def test_resume_of_a_checkpoint_without_temporal_padding_keeps_zeros(tiny_vqvae_ckpt, caplog):
    """A VQ-VAE checkpoint whose args lack temporal_padding (the original's, or ours before the flag)
    was trained with zero padding: --resume with --temporal_padding replicate keeps zeros (warned)
    instead of continuing zero-padded weights with replicate padding; a stored value wins too."""
    import logging
    from videogpt_fast.checkpoint import safe_load

    ckpt = safe_load(tiny_vqvae_ckpt)
    stored = ckpt["hyper_parameters"]["args"]
    if hasattr(stored, "temporal_padding"):
        delattr(stored, "temporal_padding")
    vq = train_args("vqvae", ["--data_path", "-", *VQ_FLAGS, "--temporal_padding", "replicate"])
    with caplog.at_level(logging.WARNING, logger="videogpt_fast.train"):
        train.complete_args(vq, None, ckpt)
    assert vq.temporal_padding == "zeros"
    assert [r.getMessage() for r in caplog.records] == [
        "--resume: temporal_padding='zeros' from the checkpoint (command line had 'replicate')"]
    stored.temporal_padding = "replicate"
    vq = train_args("vqvae", ["--data_path", "-", *VQ_FLAGS])
    train.complete_args(vq, None, ckpt)
    assert vq.temporal_padding == "replicate"
