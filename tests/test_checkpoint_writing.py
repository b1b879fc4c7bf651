"""checkpoint/writing.py: atomic saves (a failure keeps the old file), hard links, temporary names."""
import errno
import os
from pathlib import Path

import pytest
import torch

from videogpt_fast import checkpoint as ckpt_mod
from videogpt_fast.checkpoint import safe_load, writing


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    ckpt_mod.atomic_save({"a": torch.ones(1)}, target)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.atomic_save({"a": torch.zeros(1)}, target)
    monkeypatch.undo()
    assert torch.equal(safe_load(target)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


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
    monkeypatch.setattr(writing, "open", lambda p, mode="r", *a, **k: _FullDisk(real_open(p, mode, *a, **k), 200)
                        if "w" in mode else real_open(p, mode, *a, **k), raising=False)
    with pytest.raises(ckpt_mod.CheckpointWriteError) as info:
        ckpt_mod.atomic_save({"a": torch.zeros(10_000)}, target)  # goes through torch's zip writer
    msg = str(info.value)
    assert info.value.errno == errno.ENOSPC and str(target) in msg and "No space left on device" in msg
    assert "inline_container" not in msg and "PytorchStreamWriter" not in msg
    monkeypatch.undo()
    assert torch.equal(safe_load(target)["a"], torch.ones(1))  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial temporary left


def test_link_or_copy(tmp_path, monkeypatch):
    src = ckpt_mod.atomic_save({"a": torch.arange(5)}, tmp_path / "epoch=0-step=1.ckpt")
    assert ckpt_mod.link_or_copy(src, tmp_path / "last.ckpt") == "hard link"
    assert (tmp_path / "last.ckpt").stat().st_ino == src.stat().st_ino
    src2 = ckpt_mod.atomic_save({"a": torch.arange(6)}, tmp_path / "epoch=0-step=2.ckpt")

    def no_links(a, b):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # a filesystem without hard links
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
