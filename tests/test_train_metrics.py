"""Training metrics (videogpt_fast.train.metrics): metrics.jsonl, TensorBoard, reading the log back."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from conftest import TRAIN_VQ_FLAGS as VQ_FLAGS, train_args
from videogpt_fast import train
from videogpt_fast.train import metrics as metrics_mod


class _FakeSummaryWriter:
    instances: list = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        _FakeSummaryWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
    import types
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = _FakeSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    _FakeSummaryWriter.instances = []
    return _FakeSummaryWriter.instances


def test_metrics_writer_tensorboard_scalars(fake_tensorboard, tmp_path):
    w = train.MetricsWriter(tmp_path, enabled=True, resume_step=None)
    w.write({"step": 3, "epoch": 0, "loss": 1.5, "lr": 3e-4})
    w.write({"step": 4, "epoch": 1, "val/recon_loss": 0.25, "note": "text"})
    w.close()
    (tb,) = fake_tensorboard
    assert tb.log_dir == str(tmp_path / "tensorboard") and tb.closed
    assert tb.scalars == [("loss", 1.5, 3), ("lr", 3e-4, 3), ("val/recon_loss", 0.25, 4)]
    assert [r["step"] for r in train.read_metrics(tmp_path / "metrics.jsonl")] == [3, 4]
    train.MetricsWriter(tmp_path / "rank1", enabled=False, resume_step=None).write({"step": 1, "loss": 1.0})
    assert len(fake_tensorboard) == 1 and not (tmp_path / "rank1").exists()  # only rank 0 writes


def test_trainer_writes_tensorboard(fake_tensorboard, tmp_path):
    from videogpt_fast.data.synthetic import MovingShapesDataset
    args = train_args("vqvae", ["--data_path", "-", *VQ_FLAGS, "--max_steps", "2", "--device", "cpu",
                           "--output", str(tmp_path)])
    train.Trainer(args, MovingShapesDataset(4, 4, 16), MovingShapesDataset(2, 4, 16, seed=1)).fit()
    (tb,) = fake_tensorboard
    assert tb.closed and tb.log_dir == str(tmp_path / "tensorboard")
    steps = lambda tag: [s for t, _, s in tb.scalars if t == tag]  # noqa: E731
    assert steps("loss") == steps("recon_loss") == steps("lr") == [1, 2]
    assert steps("val/recon_loss") and all(math.isfinite(v) for _, v, _ in tb.scalars)
    assert not {"step", "epoch"} & {t for t, _, _ in tb.scalars}


def test_metrics_writer_without_tensorboard(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    w = train.MetricsWriter(tmp_path, enabled=True, resume_step=None)
    assert w.tb is None
    w.write({"step": 1, "epoch": 0, "loss": 2.0})
    w.close()
    assert train.read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "epoch": 0, "loss": 2.0}]
    assert not (tmp_path / "tensorboard").exists()


def test_metrics_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import builtins
    import errno
    w = train.MetricsWriter(tmp_path, enabled=True, resume_step=None)
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda p, mode="r", *a, **k: Full(real_open(p, mode, *a, **k))
                        if str(p) == str(w.path) else real_open(p, mode, *a, **k))
    with pytest.raises(OSError, match=f"could not append to {w.path}: No space left on device"):
        w.write({"step": 1, "loss": 1.0})


def test_read_metrics_rejects_a_bad_line_in_the_middle(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl line 2 is not a metrics record"):
        train.read_metrics(tmp_path / "m.jsonl")


def test_metrics_rewrite_on_resume_is_atomic_and_a_torn_middle_line_says_what_to_do(tmp_path, monkeypatch):
    """Attack: resuming rewrote metrics.jsonl in place (a kill then lost the whole log); a torn line in
    the middle of it blocked the resume without saying what to do."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    written = []
    real = metrics_mod.atomic_write
    monkeypatch.setattr(metrics_mod, "atomic_write", lambda p, w: written.append(Path(p).name) or real(p, w))
    train.MetricsWriter(tmp_path, True, resume_step=2).close()
    assert written == ["metrics.jsonl"]
    assert [r["step"] for r in train.read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\n{"step": 2, "lo{"step": 3}\n{"step": 4}\n')
    with pytest.raises(ValueError, match=r"cannot resume: .*metrics\.jsonl line 2 is not a metrics record.*fix or "
                                         r"delete that line"):
        train.MetricsWriter(tmp_path, True, resume_step=4)
    assert path.read_text().count("\n") == 3  # the log is left as it was
