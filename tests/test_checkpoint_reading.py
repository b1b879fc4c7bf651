"""checkpoint/reading.py: safe_load refuses code-executing pickles and names damaged files in one line."""
import pickle

import pytest
import torch

from conftest import BAD_KINDS, PickleExploit, tiny_vqvae_file, write_bad_checkpoint
from videogpt_fast import checkpoint as ckpt_mod
from videogpt_fast.checkpoint import UnsafeCheckpointError, load_vqvae, safe_load


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    exploit = PickleExploit()
    exploit.marker = marker
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"args": exploit}}, bad)
    with pytest.raises(UnsafeCheckpointError, match="os.system|posix.system|allow-list"):
        load_vqvae(str(bad))
    with pytest.raises(pickle.UnpicklingError):
        safe_load(bad)
    assert not marker.exists()


def test_legacy_pickle_format_is_refused(tmp_path):
    exploit = PickleExploit()
    exploit.marker = tmp_path / "pwned"
    bad = tmp_path / "legacy.ckpt"
    torch.save({"x": exploit}, bad, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError):
        safe_load(bad)
    assert not exploit.marker.exists()


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


def test_a_flipped_byte_is_a_corrupt_checkpoint_not_silently_other_weights(tmp_path):
    path = tiny_vqvae_file(tmp_path / "vq.ckpt")
    import zipfile
    with zipfile.ZipFile(path) as z:  # flip a byte inside the codebook's stored tensor data
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.file_size // 2
    raw[at] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(ckpt_mod.CorruptCheckpointError, match=r"vq\.ckpt is corrupt: its member .* fails its CRC-32"):
        load_vqvae(path)
