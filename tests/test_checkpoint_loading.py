"""checkpoint/loading.py: original (Lightning 1.x) checkpoints load and reproduce the fixtures; their args
are checked against their weights before any model is built."""
import argparse

import pytest
import torch

from conftest import assert_close, load_fixture, tiny_vqvae_file
from videogpt_fast import checkpoint as ckpt_mod
from videogpt_fast.checkpoint import infer_vqvae_args, load_videogpt, load_vqvae, safe_load, save_checkpoint


def test_lightning_vqvae_checkpoint_loads_and_matches_fixture():
    path = load_fixture("vqvae_lightning.ckpt")
    ref = load_fixture("vqvae.pt")
    model = load_vqvae(str(path))
    assert not model.training
    with torch.no_grad():
        codes = model.encode(ref["x"])
        decoded = model.decode(ref["encodings"])
    assert torch.equal(codes, ref["encodings"])
    assert_close(decoded, ref["decoded"])


@pytest.mark.parametrize("name", ["gpt_full", "gpt_sparse"])
def test_lightning_gpt_checkpoint_loads_with_stale_vqvae_path(name):
    """The stored VQ-VAE path (/tmp/fx/...) does not exist: the VQ-VAE is rebuilt from the
    weights inside the prior checkpoint, and the model reproduces the fixture."""
    path = load_fixture(f"{name}_lightning.ckpt")
    ref = load_fixture(f"{name}.pt")
    model = load_videogpt(str(path))
    sd = model.state_dict()
    assert set(sd) == set(ref["state_dict"])
    for k, v in ref["state_dict"].items():
        assert torch.equal(sd[k], v), k
    assert model.vqvae.latent_shape == tuple(ref["targets"].shape[1:])


def test_gpt_checkpoint_with_explicit_vqvae_override(tmp_path):
    vq_path = load_fixture("vqvae_lightning.ckpt")
    path = load_fixture("gpt_full_lightning.ckpt")
    model = load_videogpt(str(path), vqvae=str(vq_path))
    ref = load_fixture("gpt_full.pt")
    with torch.no_grad():
        emb = model.vqvae.codebook.dictionary_lookup(ref["targets"])
        loss, logits = model(emb, ref["targets"], {})
    assert_close(logits, ref["logits"])
    assert_close(loss, ref["loss"])


def test_infer_vqvae_args_from_prior_state_dict():
    ref_vq = load_fixture("vqvae.pt")
    ref = load_fixture("gpt_full.pt")
    inferred = infer_vqvae_args(argparse.Namespace(**ref["args"]), ref["state_dict"])
    for key, value in ref_vq["args"].items():
        assert list(getattr(inferred, key)) == list(value) if isinstance(value, (list, tuple)) \
            else getattr(inferred, key) == value, key


def test_wrong_kind_of_checkpoint_is_a_value_error():
    with pytest.raises(ValueError, match="not a VQ-VAE.*load_videogpt"):
        load_vqvae(str(load_fixture("gpt_full_lightning.ckpt")))
    with pytest.raises(ValueError, match="not a VideoGPT prior.*load_vqvae"):
        load_videogpt(str(load_fixture("vqvae_lightning.ckpt")))


def test_checkpoint_of_neither_model_says_so(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"linear.weight": torch.zeros(2, 2)}, "hyper_parameters": {"args": {}}}, path)
    with pytest.raises(ValueError, match="is a checkpoint of neither model .unknown state-dict keys., not a VQ-VAE"):
        load_vqvae(str(path))


def test_args_are_checked_against_weights_before_building(tmp_path, monkeypatch):
    """A tiny file whose args say n_codes=2**25 fails at once, without building the model for real."""
    from videogpt_fast.vqvae import VQVAE
    vq = VQVAE(argparse.Namespace(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=1, downsample=[2, 2, 2],
                                  sequence_length=4, resolution=8))
    path = save_checkpoint(tmp_path / "liar.ckpt", vq)
    raw = safe_load(path)
    raw["hyper_parameters"]["args"].n_codes = 2 ** 25
    torch.save(raw, path)
    built = []
    real_init = VQVAE.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        built.append(next(self.parameters()).device.type)

    monkeypatch.setattr(VQVAE, "__init__", spy)
    with pytest.raises(ckpt_mod.CheckpointMismatchError, match=r"liar\.ckpt.*codebook\.embeddings.*\(8, 4\).*"
                                                               r"\(33554432, 4\)"):
        load_vqvae(path)
    assert built == ["meta"]  # only the shape check ran, on the meta device
    raw["hyper_parameters"]["args"].n_hiddens = 7  # args that build no model at all
    torch.save(raw, path)
    with pytest.raises(ckpt_mod.CheckpointMismatchError, match="do not describe a model.*n_hiddens"):
        load_vqvae(path)


def test_prior_args_are_checked_against_weights(tmp_path):
    path = load_fixture("gpt_full_lightning.ckpt")
    raw = safe_load(path)
    raw["hyper_parameters"]["args"].hidden_dim *= 2
    bad = tmp_path / "gpt.ckpt"
    torch.save(raw, bad)
    with pytest.raises(ckpt_mod.CheckpointMismatchError, match="gpt.ckpt.*do not match its weights"):
        load_videogpt(str(bad))
    raw = safe_load(path)
    del raw["state_dict"]["attn_stack.pos_embd.emb.d_0"]  # its stored VQ-VAE path is stale: rebuilt from weights
    torch.save(raw, bad)
    with pytest.raises(ckpt_mod.CheckpointMismatchError, match=r"gpt.ckpt: .*lacks \['attn_stack.pos_embd.emb.d_0'\]"):
        load_videogpt(str(bad))


@pytest.mark.parametrize("poison, match", [
    (lambda t: t.to(torch.int64), r"is torch\.int64 in the file but torch\.float32 in the model"),
    (lambda t: torch.full_like(t, float("nan")), r"holds NaN"),
])
def test_integer_or_nan_weights_are_refused(tmp_path, poison, match):
    path = tiny_vqvae_file(tmp_path / "vq.ckpt")
    raw = safe_load(path)
    raw["state_dict"]["codebook.embeddings"] = poison(raw["state_dict"]["codebook.embeddings"])
    torch.save(raw, path)
    with pytest.raises(ckpt_mod.CheckpointMismatchError, match=r"vq\.ckpt.*codebook\.embeddings.*" + match):
        load_vqvae(path)


def test_a_million_layers_in_a_small_file_fail_at_once(tmp_path):
    """Args with n_res_layers=10**6 would take hours to build even on the meta device."""
    path = tiny_vqvae_file(tmp_path / "vq.ckpt")
    raw = safe_load(path)
    raw["hyper_parameters"]["args"].n_res_layers = 10 ** 6
    torch.save(raw, path)
    with pytest.raises(ckpt_mod.CheckpointMismatchError, match=r"vq\.ckpt: .* describe a model of [\d,]+ values "
                                                               r"\(n_res_layers=1000000\), but its weights hold"):
        load_vqvae(path)


def test_vqvae_temporal_padding_of_a_prior_is_checked(tmp_path):
    """A prior records its VQ-VAE's temporal padding (vqvae_temporal_padding; absent: zeros). A bogus
    value is a CheckpointMismatchError naming the file, not a deep ValueError, and a VQ-VAE given
    whose padding differs from the recorded one is refused (its codes mean something else)."""
    from videogpt_fast.checkpoint import CheckpointMismatchError
    from videogpt_fast.vqvae import VQVAE
    ckpt = torch.load(load_fixture("gpt_full_lightning.ckpt"), weights_only=False)
    args = ckpt["hyper_parameters"]["args"]
    args = argparse.Namespace(**args) if isinstance(args, dict) else args
    args.vqvae = str(tmp_path / "missing_vqvae.ckpt")  # stale: rebuilt from the prior's weights
    for bad in ("bogus", "", 3):
        args.vqvae_temporal_padding = bad
        ckpt["hyper_parameters"]["args"] = args
        path = tmp_path / "bad_padding.ckpt"
        torch.save(ckpt, path)
        with pytest.raises(CheckpointMismatchError, match=r"bad_padding\.ckpt.*vqvae_temporal_padding must be one of"):
            load_videogpt(str(path))
    args.vqvae_temporal_padding = "replicate"
    torch.save(ckpt, path)
    model = load_videogpt(str(path))
    assert model.vqvae.temporal_padding == "replicate"
    zeros = VQVAE(infer_vqvae_args(argparse.Namespace(**{**vars(args), "vqvae_temporal_padding": None}),
                                   ckpt["state_dict"]))
    with pytest.raises(CheckpointMismatchError, match=r"bad_padding\.ckpt.*temporal_padding='replicate'"):
        load_videogpt(str(path), vqvae=zeros)
    with pytest.raises(CheckpointMismatchError, match="temporal_padding='zeros'.*'replicate'"):
        load_videogpt(str(load_fixture("gpt_full_lightning.ckpt")), vqvae=model.vqvae)
