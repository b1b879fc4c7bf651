"""The training loop (videogpt_fast.train.trainer): both stages, video folders, the loader report, precision,
validation, progress."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import TRAIN_GPT_FLAGS as GPT_FLAGS, TRAIN_VQ_FLAGS as VQ_FLAGS, train_args, train_losses
from videogpt_fast import train
from videogpt_fast.checkpoint import load_videogpt, load_vqvae, safe_load
from videogpt_fast.train import trainer as trainer_mod


def test_in_memory_dataset_and_bf16(tmp_path):
    """The loop the demo uses: an in-memory dataset, bf16 autocast on CPU, activation checkpointing."""
    from videogpt_fast.data.synthetic import MovingShapesDataset
    args = train.build_parser("vqvae").parse_args(["--data_path", "-", *VQ_FLAGS, "--max_steps", "2",
                                                   "--precision", "bf16", "--output", str(tmp_path)])
    args.stage = "vqvae"
    hist = train.Trainer(args, MovingShapesDataset(4, 4, 16), MovingShapesDataset(2, 4, 16, seed=1)).fit()
    assert [r["step"] for r in hist if "loss" in r] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in hist if "loss" in r)
    assert any("val/recon_loss" in r for r in hist)


def test_activation_checkpointing_changes_memory_not_numbers(shapes_hdf5, tiny_vqvae_ckpt, tmp_path):
    base = ["gpt", "--data_path", shapes_hdf5, *GPT_FLAGS, "--vqvae", tiny_vqvae_ckpt, "--max_steps", "2", "--layers", "2",
            "--val_every", "-1"]
    train.main(base + ["--output", str(tmp_path / "plain")])
    train.main(base + ["--output", str(tmp_path / "ckpt"), "--activation_checkpointing"])
    assert train_losses(tmp_path / "plain") == train_losses(tmp_path / "ckpt")


def test_compile_trains_both_stages(shapes_hdf5, tiny_vqvae_ckpt, tmp_path):
    """--compile (torch.compile) runs a VQ-VAE and a prior step and gives finite losses."""
    assert train.main(["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "2", "--val_every", "-1",
                       "--compile", "--output", str(tmp_path / "vq")]) in (0, None)
    assert train.main(["gpt", "--data_path", shapes_hdf5, *GPT_FLAGS, "--vqvae", tiny_vqvae_ckpt, "--max_steps", "2",
                       "--val_every", "-1", "--compile", "--output", str(tmp_path / "gpt")]) in (0, None)
    for stage in ("vq", "gpt"):
        losses = train_losses(tmp_path / stage)
        assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())


def test_vqvae_trains_on_video_folder_with_corrupt_file(labelled_video_folder, tmp_path, capsys):
    """End to end on real H.264 files: the corrupt one is skipped, counted and reported at run start."""
    out = tmp_path / "vq"
    assert train.main(["vqvae", "--data_path", labelled_video_folder, *VQ_FLAGS, "--max_steps", "2", "--device", "cpu",
                       "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable video file(s) of train/" in printed and "corrupt.mp4" in printed
    assert "loader: PyTorch DataLoader + PyAV (auto: no CUDA device)" in printed
    losses = train_losses(out)
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    assert any("val/recon_loss" in r for r in train.read_metrics(out / "metrics.jsonl"))
    assert load_vqvae(out / "last.ckpt").args.sequence_length == 4


def test_class_cond_gpt_on_video_folder(labelled_video_folder, tiny_vqvae_ckpt, tmp_path):
    out = tmp_path / "gpt"
    assert train.main(["gpt", "--data_path", labelled_video_folder, *GPT_FLAGS, "--vqvae", tiny_vqvae_ckpt, "--class_cond",
                       "--max_steps", "2", "--device", "cpu", "--output", str(out)]) == 0
    losses = train_losses(out)
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    gpt = load_videogpt(out / "last.ckpt")
    assert gpt.args.class_cond and gpt.args.class_cond_dim == 2  # cats, dogs


def test_auto_loader_choice_is_reported_by_trainer(shapes_hdf5, labelled_video_folder, tmp_path, capsys, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="videogpt_fast.train"):
        train.Trainer(train_args("vqvae", ["--data_path", labelled_video_folder, *VQ_FLAGS, "--device", "cpu",
                                      "--output", str(tmp_path / "a")]))
        train.Trainer(train_args("vqvae", ["--data_path", shapes_hdf5, *VQ_FLAGS, "--output", str(tmp_path / "b")]))
        train.Trainer(train_args("vqvae", ["--data_path", shapes_hdf5, *VQ_FLAGS, "--loader", "pytorch",
                                      "--output", str(tmp_path / "c")]))
    printed = capsys.readouterr().out
    for msg in ("loader: PyTorch DataLoader + PyAV (auto: no CUDA device)",
                "loader: PyTorch DataLoader + HDF5 (auto: --data_path is an HDF5 file; DALI reads video folders)",
                "loader: PyTorch DataLoader + HDF5 (--loader pytorch)"):
        assert f"[videogpt_fast] {msg}" in printed
        assert any(r.levelname == "INFO" and r.getMessage() == msg for r in caplog.records)


def test_precision_16_on_cpu(shapes_hdf5, tmp_path):
    """fp16 autocast + GradScaler (with clipping after unscaling) runs on CPU with finite losses."""
    args = train_args("vqvae", ["--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "3", "--precision", "16",
                           "--gradient_clip_val", "1.0", "--device", "cpu", "--output", str(tmp_path)])
    trainer = train.Trainer(args)
    assert trainer.autocast_dtype == torch.float16 and trainer.scaler.is_enabled()
    hist = trainer.fit()
    assert [r["step"] for r in hist if "loss" in r] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in hist if "loss" in r)
    assert safe_load(tmp_path / "last.ckpt")["videogpt_fast"]["scaler"]["scale"] > 0


def test_sync_batchnorm_on_cpu(tmp_path, capsys, monkeypatch):
    """One process: a logged no-op; under DDP on CPU: a clear error (SyncBatchNorm needs CUDA)."""
    from videogpt_fast.data.synthetic import MovingShapesDataset
    flags = ["--data_path", "-", *VQ_FLAGS, "--max_steps", "1", "--val_every", "-1", "--sync_batchnorm",
             "--device", "cpu", "--output", str(tmp_path)]
    hist = train.Trainer(train_args("vqvae", flags), MovingShapesDataset(2, 4, 16)).fit()
    assert [r["step"] for r in hist] == [1]
    assert "--sync_batchnorm has no effect here (one process: nothing to synchronise)" in capsys.readouterr().out
    monkeypatch.setattr(trainer_mod, "setup_distributed", lambda flag: (torch.device("cpu"), 0, 2))
    with pytest.raises(ValueError, match="--sync_batchnorm needs CUDA"):
        train.Trainer(train_args("vqvae", flags), MovingShapesDataset(2, 4, 16))


def test_validation_is_bounded_and_shows_progress(tmp_path, capsys):
    from videogpt_fast.data.synthetic import MovingShapesDataset
    flags = [f for f in VQ_FLAGS if f != "--no_progress"]
    args = train_args("vqvae", ["--data_path", "-", *flags, "--max_steps", "1", "--device", "cpu",
                           "--output", str(tmp_path)])
    assert args.limit_val_batches == train.VAL_BATCHES > 0  # bounded by default
    args.limit_val_batches = 2
    trainer = train.Trainer(args, MovingShapesDataset(2, 4, 16), MovingShapesDataset(10, 4, 16, seed=1))
    batches = list(trainer.val_loader)
    served = []

    class Counting:
        def __len__(self):
            return len(batches)

        def __iter__(self):
            for b in batches:
                served.append(1)
                yield b

    trainer.val_loader = Counting()
    capsys.readouterr()
    assert "val/recon_loss" in trainer.validate()
    assert len(served) == 3  # 2 batches used, the loop stops at the third
    err = capsys.readouterr().err
    # the bar's total is the bound (tqdm redraws at most every 0.1 s, so "2/2" itself may not show)
    assert "validate" in err and "/2 " in err.replace("|", " ") + " "


def test_progress_bar_marks_validation_metrics(shapes_hdf5, tmp_path, capsys):
    """After a validation the bar shows val_* metrics, which a reader cannot take for training ones."""
    flags = [f for f in VQ_FLAGS if f != "--no_progress"]
    assert train.main(["vqvae", "--data_path", shapes_hdf5, *flags, "--max_steps", "1", "--limit_val_batches", "1",
                       "--output", str(tmp_path / "run")]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    last = [line for line in bar if line.startswith("train vqvae")][-1]
    assert "val_recon_loss=" in last and " recon_loss=" not in last


def _nan_from(step_no: int, monkeypatch):
    """Make every train step from ``step_no`` on return a NaN loss (the model itself is untouched)."""
    real = trainer_mod.Trainer.train_step

    def train_step(self, batch):
        loss, metrics = real(self, batch)
        return (loss * float("nan") if self.global_step + 1 >= step_no else loss), metrics
    monkeypatch.setattr(trainer_mod.Trainer, "train_step", train_step)


def test_nonfinite_loss_ends_the_run_without_a_checkpoint_of_it(shapes_hdf5, tmp_path, monkeypatch):
    """fp32: the first NaN loss ends the run with TrainingDivergedError, before the periodic save of
    that step; the metrics file shows the NaN; the checkpoint written before is unchanged."""
    _nan_from(3, monkeypatch)
    args = train_args("vqvae", ["--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "6", "--save_every", "2",
                                "--log_every", "1", "--val_every", "-1", "--device", "cpu", "--output", str(tmp_path)])
    trainer = train.Trainer(args)
    with pytest.raises(train.TrainingDivergedError, match=r"loss is nan at step 3 \(1 consecutive non-finite step\).*"
                                                          r"the last at step 2"):
        trainer.fit()
    assert safe_load(tmp_path / "last.ckpt")["global_step"] == 2
    assert sorted(p.name for p in tmp_path.glob("epoch=*.ckpt")) == ["epoch=0-step=2.ckpt"]


def test_fp16_grad_scaler_gets_some_nonfinite_steps(shapes_hdf5, tmp_path, monkeypatch):
    """With fp16's GradScaler a few non-finite steps are skipped updates, not a divergence; 20 in a
    row end the run."""
    assert trainer_mod.NONFINITE_STEPS_ALLOWED == {True: 20, False: 1}
    _nan_from(2, monkeypatch)
    args = train_args("vqvae", ["--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "25", "--precision", "16",
                                "--log_every", "5", "--val_every", "-1", "--save_every", "0", "--device", "cpu",
                                "--output", str(tmp_path)])
    with pytest.raises(train.TrainingDivergedError, match="at step 21 \\(20 consecutive"):
        train.Trainer(args).fit()


def test_cli_reports_divergence_in_one_line(shapes_hdf5, tmp_path, monkeypatch, capsys):
    _nan_from(1, monkeypatch)
    code = train.main(["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "3", "--val_every", "-1",
                       "--no_progress", "--device", "cpu", "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("videogpt-fast train vqvae: error: training diverged: the loss is nan")
    assert "none was written" in err[-1] and "Traceback" not in "\n".join(err)
