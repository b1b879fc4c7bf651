"""Models of a training run (videogpt_fast.train.models): each model's own loss through LossModule,
build_model, the stored hyper-parameters."""
from __future__ import annotations

import argparse

import pytest
import torch

from conftest import TRAIN_GPT_FLAGS as GPT_FLAGS, TRAIN_VQ_FLAGS as VQ_FLAGS, train_args
from videogpt_fast import train
from videogpt_fast.train.models import check_latent_fit, stage_loss


def _vq_args(**kw) -> argparse.Namespace:
    args = train_args("vqvae", ["--data_path", "-", *VQ_FLAGS, *kw.pop("flags", [])])
    return train.complete_args(args, train_set=None)


def test_loss_module_runs_each_models_own_loss():
    """The VQ-VAE stage: LossModule gives VQVAE.compute_loss's loss and metrics (same numbers, same
    codebook updates); the prior's stage gives VideoGPT.compute_loss with no metrics."""
    x = torch.rand(2, 3, 4, 16, 16) - 0.5
    out = {}
    for how in ("module", "method"):
        torch.manual_seed(0)
        vq = train.build_model(_vq_args()).train()
        out[how] = (train.LossModule(vq, "vqvae")({"video": x}) if how == "module" else vq.compute_loss(x), vq)
    (l0, m0), vq0 = out["module"]
    (l1, m1), vq1 = out["method"]
    assert torch.equal(l0, l1) and m0.keys() == m1.keys() == {"recon_loss", "commitment_loss", "perplexity"}
    assert all(torch.equal(m0[k], m1[k]) for k in m0)
    assert torch.equal(vq0.codebook.embeddings, vq1.codebook.embeddings)

    vq0.eval()
    gpt_args = argparse.Namespace(vqvae="-", n_cond_frames=0, class_cond=False, class_cond_dim=None, hidden_dim=24,
                                  heads=2, layers=1, dropout=0.0, attn_type="full", attn_dropout=0.0,
                                  sequence_length=4, resolution=16)
    from videogpt_fast.gpt import VideoGPT
    gpt = VideoGPT(gpt_args, vqvae=vq0).eval()
    loss, metrics = train.LossModule(gpt, "gpt")({"video": x})
    assert metrics == {} and torch.equal(loss, gpt.compute_loss({"video": x}))
    assert stage_loss(gpt, "gpt", {"video": x})[0].item() == pytest.approx(loss.item())


def test_build_model_does_not_change_args():
    args = _vq_args()
    before = dict(vars(args))
    model = train.build_model(args)
    assert vars(args) == before
    assert vars(model.args) == vars(train.model_namespace(args))
    assert model.args.downsample == [2, 2, 2]


def test_model_namespace_keeps_only_plain_values():
    ns = train.model_namespace(argparse.Namespace(a=1, b=(2, 3), c=None, d=object(), e=[1, object()], f="x"))
    assert vars(ns) == {"a": 1, "b": [2, 3], "c": None, "f": "x"}


def test_latent_fit_errors(tiny_vqvae_ckpt):
    from videogpt_fast.checkpoint import load_vqvae
    vq = load_vqvae(tiny_vqvae_ckpt)  # (4, 16, 16) clips, downsample (2, 2, 2)
    args = train_args("gpt", ["--data_path", "-", *GPT_FLAGS, "--vqvae", tiny_vqvae_ckpt])
    check_latent_fit(vq, args)
    with pytest.raises(ValueError, match="latent shape"):
        check_latent_fit(vq, argparse.Namespace(**{**vars(args), "sequence_length": 8}))
    with pytest.raises(ValueError, match="which does not divide"):
        check_latent_fit(vq, argparse.Namespace(**{**vars(args), "resolution": 15}))
    with pytest.raises(ValueError, match="--n_cond_frames 4 must be < --sequence_length 4"):
        check_latent_fit(vq, argparse.Namespace(**{**vars(args), "n_cond_frames": 4}))


def test_temporal_padding_is_kept_through_training_and_loading(shapes_hdf5, tmp_path, caplog):
    """``train vqvae --temporal_padding replicate`` stores it; a prior trained on that VQ-VAE records it
    (``vqvae_temporal_padding``: the weights cannot tell) and rebuilds its VQ-VAE with it when the
    stored VQ-VAE path is gone; an original-style prior's VQ-VAE pads with zeros. A bad value is a
    usage error."""
    import shutil
    from videogpt_fast.checkpoint import load_videogpt, load_vqvae
    vq_dir = tmp_path / "vq"
    assert train.main(["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "1", "--val_every", "-1",
                       "--temporal_padding", "replicate", "--output", str(vq_dir)]) == 0
    assert load_vqvae(vq_dir / "last.ckpt").temporal_padding == "replicate"
    assert train.main(["gpt", "--data_path", shapes_hdf5, *GPT_FLAGS, "--vqvae", str(vq_dir / "last.ckpt"),
                       "--max_steps", "1", "--val_every", "-1", "--output", str(tmp_path / "gpt")]) == 0
    shutil.rmtree(vq_dir)
    gpt = load_videogpt(tmp_path / "gpt" / "last.ckpt")
    assert gpt.vqvae.temporal_padding == "replicate" and gpt.args.vqvae_temporal_padding == "replicate"
    with pytest.raises(SystemExit) as e:
        train.main(["vqvae", "--data_path", shapes_hdf5, "--temporal_padding", "reflect"])
    assert e.value.code == 2


def test_an_original_style_prior_keeps_zero_padding(shapes_hdf5, tiny_vqvae_ckpt, tmp_path):
    from videogpt_fast.checkpoint import load_videogpt
    assert train.main(["gpt", "--data_path", shapes_hdf5, *GPT_FLAGS, "--vqvae", tiny_vqvae_ckpt, "--max_steps", "1",
                       "--val_every", "-1", "--output", str(tmp_path / "gpt")]) == 0
    gpt = load_videogpt(tmp_path / "gpt" / "last.ckpt")
    assert gpt.vqvae.temporal_padding == "zeros" and not hasattr(gpt.args, "vqvae_temporal_padding")
