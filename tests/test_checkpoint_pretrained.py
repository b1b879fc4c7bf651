"""checkpoint/pretrained.py: pretrained names resolve in the local caches and are never downloaded."""
from pathlib import Path

import pytest

from conftest import load_fixture
from videogpt_fast.checkpoint import load_vqvae


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
