"""Safe loading of original (Lightning 1.x) checkpoints, pretrained names, atomic saving."""
import argparse
import errno
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


# ----------------------------------------------------------------------------------------------
# unreadable files: one clear CheckpointError naming the file (issue 15, item 6)
# ----------------------------------------------------------------------------------------------
BAD_KINDS = ["empty", "truncated", "random", "text", "plain_pickle", "legacy_unsafe", "zip_unsafe",
             "truncated_legacy"]


def write_bad_checkpoint(kind: str, path: Path) -> Path:
    """A checkpoint file of one broken ``kind`` at ``path`` (small, made from scratch)."""
    good = path.with_suffix(".good")
    torch.save({"state_dict": {"w": torch.arange(2000.0)}, "hyper_parameters": {"args": argparse.Namespace(a=1)}},
               good)
    exploit = _Exploit()
    exploit.marker = path.parent / "pwned"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random":
        g = torch.Generator().manual_seed(252)
        path.write_bytes(torch.randint(0, 256, (1 << 16,), dtype=torch.uint8, generator=g).numpy().tobytes())
    elif kind == "text":
        path.write_text("hello world\n")
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"state_dict": {}}))
    elif kind == "legacy_unsafe":
        torch.save({"x": exploit}, path, _use_new_zipfile_serialization=False)
    elif kind == "zip_unsafe":
        torch.save({"state_dict": {}, "hyper_parameters": {"args": exploit}}, path)
    elif kind == "truncated_legacy":
        torch.save({"state_dict": {"w": torch.ones(3)}}, good, _use_new_zipfile_serialization=False)
        path.write_bytes(good.read_bytes()[:300])
    good.unlink()
    return path


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_unreadable_checkpoint_is_one_clear_error(kind, tmp_path):
    path = write_bad_checkpoint(kind, tmp_path / "bad.ckpt")
    with pytest.raises(ckpt_mod.CheckpointError) as info:
        load_vqvae(str(path))
    msg = str(info.value)
    want = ckpt_mod.UnsafeCheckpointError if kind.endswith("_unsafe") else ckpt_mod.CorruptCheckpointError
    assert type(info.value) is want
    assert str(path) in msg and "\n" not in msg
    for leak in ("weights_only", "see below", "trust", "add_safe_globals"):
        assert leak not in msg, msg
    if want is ckpt_mod.UnsafeCheckpointError:
        assert "posix.system" in msg or "os.system" in msg
    assert not (tmp_path / "pwned").exists()


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes (a full disk)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if self.room < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_while_saving_names_the_path(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    ckpt_mod.atomic_save({"a": torch.ones(1)}, target)
    real_open = open
    monkeypatch.setattr(ckpt_mod, "open", lambda p, mode="r", *a, **k: _FullDisk(real_open(p, mode, *a, **k), 200)
                        if "w" in mode else real_open(p, mode, *a, **k), raising=False)
    with pytest.raises(ckpt_mod.CheckpointWriteError) as info:
        ckpt_mod.atomic_save({"a": torch.zeros(10_000)}, target)  # goes through torch's zip writer
    msg = str(info.value)
    assert info.value.errno == errno.ENOSPC and str(target) in msg and "No space left on device" in msg
    assert "inline_container" not in msg and "PytorchStreamWriter" not in msg
    monkeypatch.undo()
    assert torch.equal(safe_load(target)["a"], torch.ones(1))  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial temporary left


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


def test_link_or_copy(tmp_path, monkeypatch):
    src = ckpt_mod.atomic_save({"a": torch.arange(5)}, tmp_path / "epoch=0-step=1.ckpt")
    assert ckpt_mod.link_or_copy(src, tmp_path / "last.ckpt") == "hard link"
    assert (tmp_path / "last.ckpt").stat().st_ino == src.stat().st_ino
    src2 = ckpt_mod.atomic_save({"a": torch.arange(6)}, tmp_path / "epoch=0-step=2.ckpt")

    def no_links(a, b):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(ckpt_mod.os, "link", no_links)  # a filesystem without hard links
    assert ckpt_mod.link_or_copy(src2, tmp_path / "last.ckpt") == "copy"
    assert (tmp_path / "last.ckpt").stat().st_ino != src2.stat().st_ino
    assert torch.equal(safe_load(tmp_path / "last.ckpt")["a"], torch.arange(6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt"]


def test_temporary_names():
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix=".last.", suffix=".tmp.ckpt")
    os.close(fd)
    os.unlink(tmp)
    assert ckpt_mod.is_temporary(Path(tmp).name) and ckpt_mod.is_temporary(".last.ckpt.x1y2.tmp")
    assert not any(ckpt_mod.is_temporary(n) for n in ("last.ckpt", "epoch=1-step=2.ckpt", "metrics.jsonl", ".hidden"))


# ----------------------------------------------------------------------------------------------
# issue 15 follow-up attacks: damaged bytes, integer or NaN weights, a million layers in a small file
# ----------------------------------------------------------------------------------------------
def _tiny_vqvae_file(path, **override):
    from videogpt_fast.vqvae import VQVAE
    vq = VQVAE(argparse.Namespace(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=1, downsample=[2, 2, 2],
                                  sequence_length=4, resolution=8))
    save_checkpoint(path, vq)
    return path


def test_a_flipped_byte_is_a_corrupt_checkpoint_not_silently_other_weights(tmp_path):
    path = _tiny_vqvae_file(tmp_path / "vq.ckpt")
    import zipfile
    with zipfile.ZipFile(path) as z:  # flip a byte inside the codebook's stored tensor data
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    raw[at] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(ckpt_mod.CorruptCheckpointError, match=r"vq\.ckpt is corrupt: its member .* fails its CRC-32"):
        load_vqvae(path)


@pytest.mark.parametrize("poison, match", [
    (lambda t: t.to(torch.int64), r"is torch\.int64 in the file but torch\.float32 in the model"),
    (lambda t: torch.full_like(t, float("nan")), r"holds NaN"),
])
def test_integer_or_nan_weights_are_refused(tmp_path, poison, match):
    path = _tiny_vqvae_file(tmp_path / "vq.ckpt")
    raw = safe_load(path)
    raw["state_dict"]["codebook.embeddings"] = poison(raw["state_dict"]["codebook.embeddings"])
    torch.save(raw, path)
    with pytest.raises(ckpt_mod.CheckpointMismatchError, match=r"vq\.ckpt.*codebook\.embeddings.*" + match):
        load_vqvae(path)


def test_a_million_layers_in_a_small_file_fail_at_once(tmp_path):
    """Args with n_res_layers=10**6 would take hours to build even on the meta device."""
    path = _tiny_vqvae_file(tmp_path / "vq.ckpt")
    raw = safe_load(path)
    raw["hyper_parameters"]["args"].n_res_layers = 10 ** 6
    torch.save(raw, path)
    with pytest.raises(ckpt_mod.CheckpointMismatchError, match=r"vq\.ckpt: .* describe a model of [\d,]+ values "
                                                               r"\(n_res_layers=1000000\), but its weights hold"):
        load_vqvae(path)
