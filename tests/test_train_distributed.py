"""Distributed training and random state (videogpt_fast.train.distributed): torchrun DDP on CPU."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import TRAIN_GPT_FLAGS as GPT_FLAGS, TRAIN_VQ_FLAGS as VQ_FLAGS, set_flag, subprocess_env, train_losses
from videogpt_fast.checkpoint import load_videogpt, load_vqvae, safe_load


def test_torchrun_two_processes_both_stages(shapes_hdf5, tmp_path):
    """torchrun --standalone --nproc_per_node=2 trains both stages (gloo) and writes loadable checkpoints."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    vq_out, gpt_out = tmp_path / "vq", tmp_path / "gpt"
    flags = set_flag(VQ_FLAGS, "num_workers", "1")
    r = subprocess.run(torchrun + ["-m", "videogpt_fast.train", "vqvae", "--data_path", shapes_hdf5, *flags,
                                   "--max_steps", "3", "--save_every", "2", "--output", str(vq_out)],
                       env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (vq_out / "epoch=1-step=2.ckpt").is_file() and (vq_out / "last.ckpt").is_file()
    ckpt = safe_load(vq_out / "last.ckpt")
    assert ckpt["global_step"] == 3 and ckpt["hyper_parameters"]["args"].n_codes == 16
    assert len(ckpt["videogpt_fast"]["rng"]) == 2  # both ranks' RNG states
    vq = load_vqvae(vq_out / "last.ckpt")
    assert not vq.codebook._need_init

    r = subprocess.run(torchrun + ["-m", "videogpt_fast.train", "gpt", "--data_path", shapes_hdf5, *GPT_FLAGS,
                                   "--vqvae", str(vq_out / "last.ckpt"), "--max_steps", "2",
                                   "--output", str(gpt_out)],
                       env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    gpt = load_videogpt(gpt_out / "last.ckpt")
    assert gpt.shape == (2, 8, 8)
    assert set(train_losses(gpt_out)) == {1, 2}
    # the frozen VQ-VAE inside the prior is the one we trained
    torch.testing.assert_close(gpt.vqvae.codebook.embeddings, vq.codebook.embeddings, rtol=0, atol=0)


def test_rng_state_round_trip_and_preserved_rng():
    """Every stream (torch, NumPy, random) is saved and restored; preserved_rng leaves them where they were;
    the state survives torch.save / torch.load(weights_only=True) (it is stored in checkpoints)."""
    import io
    import random

    import numpy as np
    from videogpt_fast.train.distributed import get_rng_state, preserved_rng, seed_all, set_rng_state

    def draw():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    seed_all(5)
    buf = io.BytesIO()
    torch.save(get_rng_state(), buf)
    first = draw()
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True))
    assert draw() == first
    seed_all(5)
    with preserved_rng():
        draw()
    assert draw() == first


def test_single_process_setup(monkeypatch):
    from videogpt_fast.train.distributed import all_gather_object, env_world, setup_distributed
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert env_world() == (0, 1, 0)
    assert setup_distributed("cpu") == (torch.device("cpu"), 0, 1)
    assert all_gather_object({"a": 1}) == [{"a": 1}]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="asked for CUDA but torch.cuda.is_available\\(\\) is False"):
            setup_distributed("cuda")
