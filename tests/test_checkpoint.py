"""Safe loading of original (Lightning 1.x) checkpoints, pretrained names, atomic saving."""
import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import assert_close, load_fixture
from videogpt_fast import checkpoint as ckpt_mod
from videogpt_fast.checkpoint import (UnsafeCheckpointError, infer_vqvae_args, load_videogpt, load_vqvae,
                                      safe_load, save_checkpoint)


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


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"args": exploit}}, bad)
    with pytest.raises(UnsafeCheckpointError, match="os.system|posix.system|allow-list"):
        load_vqvae(str(bad))
    with pytest.raises(pickle.UnpicklingError):
        safe_load(bad)
    assert not marker.exists()


def test_legacy_pickle_format_is_refused(tmp_path):
    exploit = _Exploit()
    exploit.marker = tmp_path / "pwned"
    bad = tmp_path / "legacy.ckpt"
    torch.save({"x": exploit}, bad, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError):
        safe_load(bad)
    assert not exploit.marker.exists()


def test_pretrained_name_missing_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOGPT_FAST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_vqvae("bair_stride4x2x2")
    msg = str(info.value)
    assert str(tmp_path / "home" / "bair_stride4x2x2") in msg and "never downloads" in msg
    with pytest.raises(FileNotFoundError, match="neither an existing checkpoint file nor a pretrained name"):
        load_vqvae("no_such_model")


def test_pretrained_name_resolves_in_caches(tmp_path, monkeypatch):
    fixture = Path(load_fixture("vqvae_lightning.ckpt"))
    monkeypatch.setenv("VIDEOGPT_FAST_HOME", str(tmp_path / "fast"))
    monkeypatch.setenv("HOME", str(tmp_path))
    legacy = tmp_path / ".cache" / "videogpt"  # the original's cache folder
    legacy.mkdir(parents=True)
    (legacy / "ucf101_stride4x4x4").write_bytes(fixture.read_bytes())
    model = load_vqvae("ucf101_stride4x4x4")
    assert model.n_codes == load_fixture("vqvae.pt")["args"]["n_codes"]


def test_save_checkpoint_roundtrip_in_original_layout(tmp_path):
    model = load_vqvae(str(load_fixture("vqvae_lightning.ckpt")))
    path = save_checkpoint(tmp_path / "ck" / "last.ckpt", model, global_step=7, epoch=2,
                           extra={"optimizer": {"lr": torch.tensor(3e-4)}})
    raw = safe_load(path)
    assert raw["global_step"] == 7 and raw["epoch"] == 2
    assert isinstance(raw["hyper_parameters"]["args"], argparse.Namespace)
    assert set(raw["state_dict"]) == set(load_fixture("vqvae.pt")["state_dict"])
    again = load_vqvae(str(path))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    ckpt_mod.atomic_save({"a": torch.ones(1)}, target)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.atomic_save({"a": torch.zeros(1)}, target)
    monkeypatch.undo()
    assert torch.equal(safe_load(target)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
