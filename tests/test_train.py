"""Training: torchrun DDP on CPU, exact resume, a killed run, clear errors, the sampler."""
from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from videogpt_fast import train
from videogpt_fast.checkpoint import load_videogpt, load_vqvae, safe_load
from videogpt_fast.synthetic import write_hdf5

ROOT = Path(__file__).resolve().parents[1]
VQ_FLAGS = ["--sequence_length", "4", "--resolution", "16", "--batch_size", "2", "--num_workers", "0",
            "--embedding_dim", "8", "--n_codes", "16", "--n_hiddens", "16", "--n_res_layers", "1",
            "--downsample", "2", "2", "2", "--log_every", "1", "--no_progress"]
GPT_FLAGS = ["--sequence_length", "4", "--resolution", "16", "--batch_size", "2", "--num_workers", "0",
             "--hidden_dim", "24", "--heads", "2", "--layers", "1", "--log_every", "1", "--no_progress"]


def _set(flags: list, name: str, value: str) -> list:
    """``flags`` with ``--name``'s value replaced."""
    out = list(flags)
    out[out.index(f"--{name}") + 1] = value
    return out


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    # 5 training videos of 10 frames: random 4-frame crops, 3 batches of 2 per epoch (the last one short)
    return write_hdf5(tmp_path_factory.mktemp("data") / "shapes.hdf5", n_train=5, n_test=2,
                      frames_per_video=10, resolution=16)


@pytest.fixture(scope="module")
def vqvae_ckpt(dataset, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("vq")
    train.main(["vqvae", "--data_path", dataset, *VQ_FLAGS, "--max_steps", "3", "--output", str(out)])
    return str(out / "last.ckpt")


def _losses(folder: Path) -> dict:
    return {r["step"]: r["loss"] for r in train.read_metrics(folder / "metrics.jsonl") if "loss" in r}


def _state(path: Path) -> dict:
    return safe_load(path)["state_dict"]


def test_torchrun_two_processes_both_stages(dataset, tmp_path):
    """torchrun --standalone --nproc_per_node=2 trains both stages (gloo) and writes loadable checkpoints."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    vq_out, gpt_out = tmp_path / "vq", tmp_path / "gpt"
    flags = _set(VQ_FLAGS, "num_workers", "1")
    r = subprocess.run(torchrun + ["-m", "videogpt_fast.train", "vqvae", "--data_path", dataset, *flags,
                                   "--max_steps", "3", "--save_every", "2", "--output", str(vq_out)],
                       env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (vq_out / "epoch=1-step=2.ckpt").is_file() and (vq_out / "last.ckpt").is_file()
    ckpt = safe_load(vq_out / "last.ckpt")
    assert ckpt["global_step"] == 3 and ckpt["hyper_parameters"]["args"].n_codes == 16
    assert len(ckpt["videogpt_fast"]["rng"]) == 2  # both ranks' RNG states
    vq = load_vqvae(vq_out / "last.ckpt")
    assert not vq.codebook._need_init

    r = subprocess.run(torchrun + ["-m", "videogpt_fast.train", "gpt", "--data_path", dataset, *GPT_FLAGS,
                                   "--vqvae", str(vq_out / "last.ckpt"), "--max_steps", "2",
                                   "--output", str(gpt_out)],
                       env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    gpt = load_videogpt(gpt_out / "last.ckpt")
    assert gpt.shape == (2, 8, 8)
    assert set(_losses(gpt_out)) == {1, 2}
    # the frozen VQ-VAE inside the prior is the one we trained
    torch.testing.assert_close(gpt.vqvae.codebook.embeddings, vq.codebook.embeddings, rtol=0, atol=0)


def test_resume_vqvae_is_exact(dataset, tmp_path, capsys):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    base = ["vqvae", "--data_path", dataset, *VQ_FLAGS, "--max_steps", "6", "--save_every", "2"]
    train.main(base + ["--output", str(full)])
    # step 4 is in the middle of epoch 1 (3 batches per epoch), after the codebook initialised
    train.main(base + ["--output", str(resumed), "--resume", str(full / "epoch=1-step=4.ckpt")])
    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [5, 6]
    assert [a[5], a[6]] == [b[5], b[6]]  # bitwise
    sa, sb = _state(full / "last.ckpt"), _state(resumed / "last.ckpt")
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # resuming a finished run says there is nothing to train (not a silent no-op)
    capsys.readouterr()
    assert train.main(base + ["--output", str(full), "--resume", "auto"]) == 0
    assert "already --max_steps 6: nothing to train" in capsys.readouterr().out
    assert sorted(_losses(full)) == [1, 2, 3, 4, 5, 6]


def test_resume_gpt_is_exact_with_dropout_and_cosine(dataset, vqvae_ckpt, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    base = ["gpt", "--data_path", dataset, *GPT_FLAGS, "--vqvae", vqvae_ckpt, "--max_steps", "5",
            "--save_every", "2", "--dropout", "0.3", "--attn_dropout", "0.3", "--gradient_clip_val", "0.5"]
    train.main(base + ["--output", str(full)])
    train.main(base + ["--output", str(resumed), "--resume", str(full / "epoch=0-step=2.ckpt")])
    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [3, 4, 5]
    assert [a[s] for s in (3, 4, 5)] == [b[s] for s in (3, 4, 5)]
    lrs = {r["step"]: r["lr"] for r in train.read_metrics(full / "metrics.jsonl") if "lr" in r}
    assert lrs[1] == pytest.approx(3e-4) and lrs[5] < lrs[3] < lrs[1]  # cosine schedule over max_steps
    sa, sb = safe_load(full / "last.ckpt"), safe_load(resumed / "last.ckpt")
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    assert sa["lr_schedulers"][0]["last_epoch"] == sb["lr_schedulers"][0]["last_epoch"] == 5


def test_killed_run_resumes_from_last_checkpoint(dataset, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "videogpt_fast.train", "vqvae", "--data_path", dataset, *VQ_FLAGS,
           "--max_steps", "100000", "--save_every", "2", "--val_every", "-1", "--output", str(out)]
    log = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.time() + 120
        while not ((out / "last.ckpt").exists() and safe_load(out / "last.ckpt")["global_step"] >= 4):
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
            assert time.time() < deadline, "the run wrote no checkpoint in time"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    ckpt = safe_load(out / "last.ckpt")  # never half-written: saves are atomic
    step = ckpt["global_step"]
    assert step >= 4 and step % 2 == 0
    load_vqvae(out / "last.ckpt")
    train.main(["vqvae", "--data_path", dataset, *VQ_FLAGS, "--max_steps", str(step + 2), "--save_every", "2",
                "--val_every", "-1", "--output", str(out), "--resume", "auto"])
    assert safe_load(out / "last.ckpt")["global_step"] == step + 2
    steps = [r["step"] for r in train.read_metrics(out / "metrics.jsonl")]
    assert steps == list(range(1, step + 3))  # what the killed run logged after its checkpoint is dropped


def test_sampler_resumes_mid_epoch_and_splits_ranks():
    full = list(train.ResumableSampler(7, num_replicas=2, rank=1, seed=3))
    s = train.ResumableSampler(7, num_replicas=2, rank=1, seed=3)
    s.set_epoch(0, start=2)
    assert list(s) == full[2:] and len(s) == len(full) - 2 == 2
    r0 = list(train.ResumableSampler(7, num_replicas=2, rank=0, seed=3))
    assert len(r0) == len(full) == 4
    assert sorted({i for i, _ in r0 + full}) == list(range(7))  # every item, padded by wrapping
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]  # a new permutation each epoch
    with pytest.raises(ValueError, match="non-empty"):
        train.ResumableSampler(0)


def test_items_do_not_depend_on_workers(dataset):
    """Random crops come from each sample's own seed: the same with 0 or 2 workers, from any start."""
    from videogpt_fast.data.hdf5_dataset import HDF5Dataset
    import argparse
    ds = HDF5Dataset(dataset, 4, train=True, resolution=16)

    def batches(workers, start):
        s = train.ResumableSampler(len(ds), seed=5)
        s.set_epoch(0, start)
        args = argparse.Namespace(batch_size=2, num_workers=workers)
        return [b["video"] for b in train.make_loader(ds, s, args, torch.device("cpu"))]

    ref = batches(0, 0)
    for got in (batches(2, 0), batches(0, 2)[-2:]):
        for x, y in zip(ref[-len(got):], got):
            assert torch.equal(x, y)


def test_clear_errors(dataset, vqvae_ckpt, tmp_path, capsys):
    assert train.main(["vqvae", "--data_path", str(tmp_path / "missing.hdf5"), *VQ_FLAGS,
                       "--output", str(tmp_path / "a")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = write_hdf5(tmp_path / "empty.hdf5", n_train=0, n_test=0, frames_per_video=10, resolution=16)
    assert train.main(["vqvae", "--data_path", empty, *VQ_FLAGS, "--output", str(tmp_path / "b")]) == 2
    assert "empty" in capsys.readouterr().err
    bad = _set(GPT_FLAGS, "sequence_length", "8")  # the VQ-VAE was trained on 4 frames
    assert train.main(["gpt", "--data_path", dataset, *bad, "--vqvae", vqvae_ckpt, "--max_steps", "2",
                       "--output", str(tmp_path / "c")]) == 2
    assert "latent shape" in capsys.readouterr().err
    assert train.main(["gpt", "--data_path", dataset, *GPT_FLAGS, "--vqvae", vqvae_ckpt,
                       "--output", str(tmp_path / "d")]) == 2
    assert "--max_steps is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["nonsense"])


def test_in_memory_dataset_and_bf16(tmp_path):
    """The loop the demo uses: an in-memory dataset, bf16 autocast on CPU, activation checkpointing."""
    from videogpt_fast.synthetic import MovingShapesDataset
    args = train.build_parser("vqvae").parse_args(["--data_path", "-", *VQ_FLAGS, "--max_steps", "2",
                                                   "--precision", "bf16", "--output", str(tmp_path)])
    args.stage = "vqvae"
    hist = train.Trainer(args, MovingShapesDataset(4, 4, 16), MovingShapesDataset(2, 4, 16, seed=1)).fit()
    assert [r["step"] for r in hist if "loss" in r] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in hist if "loss" in r)
    assert any("val/recon_loss" in r for r in hist)


def test_activation_checkpointing_changes_memory_not_numbers(dataset, vqvae_ckpt, tmp_path):
    base = ["gpt", "--data_path", dataset, *GPT_FLAGS, "--vqvae", vqvae_ckpt, "--max_steps", "2", "--layers", "2",
            "--val_every", "-1"]
    train.main(base + ["--output", str(tmp_path / "plain")])
    train.main(base + ["--output", str(tmp_path / "ckpt"), "--activation_checkpointing"])
    assert _losses(tmp_path / "plain") == _losses(tmp_path / "ckpt")


def test_compile_trains_both_stages(dataset, vqvae_ckpt, tmp_path):
    """--compile (torch.compile) runs a VQ-VAE and a prior step and gives finite losses."""
    assert train.main(["vqvae", "--data_path", dataset, *VQ_FLAGS, "--max_steps", "2", "--val_every", "-1",
                       "--compile", "--output", str(tmp_path / "vq")]) in (0, None)
    assert train.main(["gpt", "--data_path", dataset, *GPT_FLAGS, "--vqvae", vqvae_ckpt, "--max_steps", "2",
                       "--val_every", "-1", "--compile", "--output", str(tmp_path / "gpt")]) in (0, None)
    for stage in ("vq", "gpt"):
        losses = _losses(tmp_path / stage)
        assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())


# ==============================================================================================
# video folders, loader choice, precision, TensorBoard, clear errors
# ==============================================================================================
@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> str:
    """train/{cats,dogs}/ tiny H.264 files plus one corrupt file; test/cats/ one file."""
    from videogpt_fast.data.synthetic import smooth_frames, write_video_file
    root = tmp_path_factory.mktemp("videos")
    for rel, n, seed in [("train/cats/a.mp4", 6, 0), ("train/dogs/b.mp4", 7, 1), ("test/cats/c.mp4", 6, 2)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(root / rel), smooth_frames(n, 20, 24, seed=seed))
    (root / "train/cats/corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return str(root)


def _args(stage: str, argv: list) -> argparse.Namespace:
    args = train.build_parser(stage).parse_args(argv)
    args.stage = stage
    return args


def test_vqvae_trains_on_video_folder_with_corrupt_file(video_folder, tmp_path, capsys):
    """End to end on real H.264 files: the corrupt one is skipped, counted and reported at run start."""
    out = tmp_path / "vq"
    assert train.main(["vqvae", "--data_path", video_folder, *VQ_FLAGS, "--max_steps", "2", "--device", "cpu",
                       "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable video file(s) of train/" in printed and "corrupt.mp4" in printed
    assert "loader: PyTorch DataLoader + PyAV (auto: no CUDA device)" in printed
    losses = _losses(out)
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    assert any("val/recon_loss" in r for r in train.read_metrics(out / "metrics.jsonl"))
    assert load_vqvae(out / "last.ckpt").args.sequence_length == 4


def test_class_cond_gpt_on_video_folder(video_folder, vqvae_ckpt, tmp_path):
    out = tmp_path / "gpt"
    assert train.main(["gpt", "--data_path", video_folder, *GPT_FLAGS, "--vqvae", vqvae_ckpt, "--class_cond",
                       "--max_steps", "2", "--device", "cpu", "--output", str(out)]) == 0
    losses = _losses(out)
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    gpt = load_videogpt(out / "last.ckpt")
    assert gpt.args.class_cond and gpt.args.class_cond_dim == 2  # cats, dogs


def test_auto_loader_choice_is_reported_by_trainer(dataset, video_folder, tmp_path, capsys, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="videogpt_fast.train"):
        train.Trainer(_args("vqvae", ["--data_path", video_folder, *VQ_FLAGS, "--device", "cpu",
                                      "--output", str(tmp_path / "a")]))
        train.Trainer(_args("vqvae", ["--data_path", dataset, *VQ_FLAGS, "--output", str(tmp_path / "b")]))
        train.Trainer(_args("vqvae", ["--data_path", dataset, *VQ_FLAGS, "--loader", "pytorch",
                                      "--output", str(tmp_path / "c")]))
    printed = capsys.readouterr().out
    for msg in ("loader: PyTorch DataLoader + PyAV (auto: no CUDA device)",
                "loader: PyTorch DataLoader + HDF5 (auto: --data_path is an HDF5 file; DALI reads video folders)",
                "loader: PyTorch DataLoader + HDF5 (--loader pytorch)"):
        assert f"[videogpt_fast] {msg}" in printed
        assert any(r.levelname == "INFO" and r.getMessage() == msg for r in caplog.records)


def test_loader_choice_on_cuda(monkeypatch):
    """The auto/dali decision on a CUDA device, with DALI usable or not (no GPU needed)."""
    import types
    from videogpt_fast.data import dali as dali_mod

    def choose(kind, path="videos"):
        fake = types.SimpleNamespace(args=types.SimpleNamespace(loader=kind, data_path=path),
                                     device=torch.device("cuda", 0))
        return train.Trainer._choose_loader(fake)

    monkeypatch.setattr(os.path, "isdir", lambda p: p == "videos")
    monkeypatch.setattr(dali_mod, "dali_status", lambda device="gpu": (True, "NVIDIA DALI 1.50"))
    assert choose("auto") == (True, "auto: CUDA device and NVIDIA DALI 1.50")
    assert choose("dali") == (True, "--loader dali")
    assert choose("auto", "d.hdf5")[0] is False
    monkeypatch.setattr(dali_mod, "dali_status", lambda device="gpu": (False, "pip install nvidia-dali"))
    assert choose("auto") == (False, "auto: DALI unavailable: pip install nvidia-dali")
    with pytest.raises(ValueError, match="--loader dali: pip install nvidia-dali"):
        choose("dali")


def test_loader_dali_without_cuda_is_a_clear_error(video_folder, tmp_path, capsys):
    assert train.main(["vqvae", "--data_path", video_folder, *VQ_FLAGS, "--loader", "dali", "--device", "cpu",
                       "--output", str(tmp_path)]) == 2
    assert "--loader dali decodes on the GPU: it needs a CUDA device" in capsys.readouterr().err


def test_loader_help_describes_auto():
    text = " ".join(train.build_parser("vqvae").format_help().split())
    assert "auto: DALI for a video folder when a CUDA device and NVIDIA DALI are there, else the PyTorch " \
           "DataLoader" in text


@pytest.mark.parametrize("name", ["notes.txt", "clip.mp4"])
def test_data_path_file_that_is_not_hdf5(name, tmp_path, capsys):
    from videogpt_fast.data.synthetic import smooth_frames, write_video_file
    path = tmp_path / name
    if name.endswith(".mp4"):
        write_video_file(str(path), smooth_frames(4, 16, 16))
    else:
        path.write_text("not a dataset\n")
    assert train.main(["vqvae", "--data_path", str(path), *VQ_FLAGS, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and repr(str(path)) in err and "not an HDF5 file" in err
    assert "train/ and test/" in err and "train_data, train_idx, test_data and test_idx" in err
    assert "Traceback" not in err


def test_precision_16_on_cpu(dataset, tmp_path):
    """fp16 autocast + GradScaler (with clipping after unscaling) runs on CPU with finite losses."""
    args = _args("vqvae", ["--data_path", dataset, *VQ_FLAGS, "--max_steps", "3", "--precision", "16",
                           "--gradient_clip_val", "1.0", "--device", "cpu", "--output", str(tmp_path)])
    trainer = train.Trainer(args)
    assert trainer.autocast_dtype == torch.float16 and trainer.scaler.is_enabled()
    hist = trainer.fit()
    assert [r["step"] for r in hist if "loss" in r] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in hist if "loss" in r)
    assert safe_load(tmp_path / "last.ckpt")["videogpt_fast"]["scaler"]["scale"] > 0


def test_sync_batchnorm_on_cpu(tmp_path, capsys, monkeypatch):
    """One process: a logged no-op; under DDP on CPU: a clear error (SyncBatchNorm needs CUDA)."""
    from videogpt_fast.synthetic import MovingShapesDataset
    flags = ["--data_path", "-", *VQ_FLAGS, "--max_steps", "1", "--val_every", "-1", "--sync_batchnorm",
             "--device", "cpu", "--output", str(tmp_path)]
    hist = train.Trainer(_args("vqvae", flags), MovingShapesDataset(2, 4, 16)).fit()
    assert [r["step"] for r in hist] == [1]
    assert "--sync_batchnorm has no effect here (one process: nothing to synchronise)" in capsys.readouterr().out
    monkeypatch.setattr(train, "_setup_distributed", lambda flag: (torch.device("cpu"), 0, 2))
    with pytest.raises(ValueError, match="--sync_batchnorm needs CUDA"):
        train.Trainer(_args("vqvae", flags), MovingShapesDataset(2, 4, 16))


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
    from videogpt_fast.synthetic import MovingShapesDataset
    args = _args("vqvae", ["--data_path", "-", *VQ_FLAGS, "--max_steps", "2", "--device", "cpu",
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


def test_rank0_builds_the_clip_index_first(video_folder, tmp_path, monkeypatch):
    """Under a process group rank 0 indexes (and caches) first; other ranks wait, then read the cache."""
    import shutil
    import torch.distributed as dist
    import videogpt_fast.data.video_index as vi
    root = tmp_path / "data"
    shutil.copytree(video_folder, root, ignore=shutil.ignore_patterns(vi.INDEX_NAME))
    events = []
    real_barrier, real_probe = dist.barrier, vi._probe_entry
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: events.append("barrier") or real_barrier(*a, **k))
    monkeypatch.setattr(vi, "_probe_entry", lambda t: events.append("probe") or real_probe(t))
    args = _args("vqvae", ["--data_path", str(root), *VQ_FLAGS])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        with pytest.warns(RuntimeWarning, match="skipping unreadable video"):
            train.open_datasets(args)
        assert events == ["probe"] * 4 + ["barrier"]  # 3 train files + 1 test file, then release the others
        events.clear()
        monkeypatch.setattr(dist, "get_rank", lambda *a: 1)
        tr, te = train.open_datasets(args)
        assert events == ["barrier"]  # waited for rank 0, then read its cache: nothing probed
        assert tr.skipped == 1 and len(tr) == 3 + 4 and len(te) == 3
    finally:
        dist.destroy_process_group()
    monkeypatch.undo()
    events.clear()
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: events.append("barrier"))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 0)
    with pytest.raises(KeyError):
        with train.rank0_first():
            raise KeyError("indexing failed")
    assert events == ["barrier"]  # rank 0 still releases the waiting ranks when it fails


# ==============================================================================================
# issue 15: flags up front, the output lock, fresh folders, leftovers of a killed run, checkpoints
# ==============================================================================================
@pytest.mark.parametrize("flags, flag", [
    (["--log_every", "0"], "--log_every"), (["--keep_checkpoints", "-1"], "--keep_checkpoints"),
    (["--num_workers", "-1"], "--num_workers"), (["--save_every", "-1"], "--save_every"),
    (["--lr", "0"], "--lr"), (["--limit_val_batches", "-1"], "--limit_val_batches"),
    (["--val_every", "-2"], "--val_every"), (["--max_steps", "0"], "--max_steps"),
    (["--gradient_clip_val", "-1"], "--gradient_clip_val"), (["--batch_size", "0"], "--batch_size"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2 ** 64)], "--seed"), (["--device", "banana"], "--device"),
    (["--device", "cuda:x"], "--device"),
])
def test_train_flags_are_checked_up_front(flags, flag, tmp_path, capsys):
    """Checked before anything else: the data path does not even exist, and nothing is written."""
    with pytest.raises(SystemExit) as e:
        train.main(["vqvae", "--data_path", str(tmp_path / "missing.hdf5"), *flags, "--output", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: must be" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_model_flags_are_checked_up_front(tmp_path, capsys):
    for flags, message in ((["--downsample", "3", "2", "2"], "powers of two"), (["--n_hiddens", "7"], "n_hiddens"),
                           (["--resolution", "18"], "divisible"), (["--heads", "0"], "argument --heads"),
                           (["--hidden_dim", "32", "--heads", "2"], "argument --hidden_dim: must be divisible by 3"),
                           (["--hidden_dim", "48", "--heads", "5"], "argument --hidden_dim: must be divisible by --heads 5"),
                           (["--n_res_layers", "1000000"], "GiB of memory of this device: lower --n_hiddens, "
                                                           "--n_res_layers"),
                           (["--n_hiddens", "100000000"], "the VQ-VAE would have")):
        with pytest.raises(SystemExit):
            train.main(["vqvae" if "--heads" not in flags else "gpt", "--data_path", "x", "--max_steps", "1", *flags])
        assert message in capsys.readouterr().err


def test_output_lock_and_fresh_output(dataset, tmp_path, capsys):
    from videogpt_fast.run_dir import LOCK_NAME, OutputLock
    out = tmp_path / "run"
    argv = ["vqvae", "--data_path", dataset, *VQ_FLAGS, "--max_steps", "1", "--val_every", "-1",
            "--output", str(out)]
    with OutputLock(out):  # another training holds the folder
        assert train.main(argv) == 2
        err = capsys.readouterr().err
        assert f"--output {out} is in use by another training (pid {os.getpid()} on host" in err
        assert err.count("\n") == 1
    assert not (set(os.listdir(out)) - {LOCK_NAME})  # the refused run wrote nothing
    assert train.main(argv) == 0
    assert OutputLock(out).acquire().release() is None  # released at the end of the run
    assert train.main(argv) == 2  # a second fresh run into the same folder
    err = capsys.readouterr().err
    assert f"--output {out} is not empty" in err and "--resume auto" in err and err.count("\n") == 1
    before = safe_load(out / "last.ckpt")["global_step"]
    assert before == 1  # untouched
    (tmp_path / "file").write_text("x")
    assert train.main(argv[:-1] + [str(tmp_path / "file")]) == 2
    assert f"--output {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


def test_resume_after_a_killed_save(dataset, tmp_path, caplog):
    """Leftovers of a killed run: stale temporaries are removed, the keep list comes from disk, a torn
    metrics line is dropped; last.ckpt is the newest periodic checkpoint's file, not a copy."""
    import logging
    out = tmp_path / "run"
    base = ["vqvae", "--data_path", dataset, *VQ_FLAGS, "--save_every", "1", "--keep_checkpoints", "2",
            "--val_every", "-1", "--output", str(out)]
    assert train.main(base + ["--max_steps", "3"]) == 0
    assert sorted(p.name for p in out.glob("epoch=*")) == ["epoch=0-step=2.ckpt", "epoch=1-step=3.ckpt"]
    assert (out / "last.ckpt").stat().st_ino == (out / "epoch=1-step=3.ckpt").stat().st_ino
    (out / ".last.x8k2.tmp.ckpt").write_bytes(b"half a checkpoint")  # a save killed by SIGKILL
    (out / ".epoch=1-step=4.ckpt.ab12.tmp").write_bytes(b"")  # the naming of earlier versions
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "epoch": 1, "lo')  # a disk filled mid-line
    with caplog.at_level(logging.WARNING):
        assert train.main(base + ["--max_steps", "5", "--resume", "auto"]) == 0
    assert not [p for p in out.iterdir() if "tmp" in p.name]
    assert any("removed 2 temporary file(s)" in r.getMessage() for r in caplog.records)
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in out.glob("epoch=*")) == ["epoch=1-step=4.ckpt", "epoch=1-step=5.ckpt"]
    assert [r["step"] for r in train.read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert (out / "last.ckpt").stat().st_ino == (out / "epoch=1-step=5.ckpt").stat().st_ino


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


def test_resume_checks_args_against_weights_first(dataset, vqvae_ckpt, tmp_path, capsys):
    raw = safe_load(vqvae_ckpt)
    raw["hyper_parameters"]["args"].n_codes = 2 ** 25
    liar = tmp_path / "liar.ckpt"
    torch.save(raw, liar)
    assert train.main(["vqvae", "--data_path", dataset, *VQ_FLAGS, "--max_steps", "5", "--resume", str(liar),
                       "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(liar) in err and "do not match its weights" in err and "codebook.embeddings" in err
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 64)
    assert train.main(["vqvae", "--data_path", dataset, *VQ_FLAGS, "--max_steps", "5", "--resume",
                       str(tmp_path / "junk.ckpt"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "junk.ckpt" in err and err.count("\n") == 1


def test_disk_full_while_training_saves(dataset, tmp_path, monkeypatch, capsys):
    import errno

    def full(obj, f, *a, **k):
        f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)  # what checkpoint/writing.py calls
    out = tmp_path / "o"
    assert train.main(["vqvae", "--data_path", dataset, *VQ_FLAGS, "--max_steps", "1", "--val_every", "-1",
                       "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"could not write {out / 'epoch=0-step=1.ckpt'}: No space left on device" in err
    assert err.count("\n") == 1 and not list(out.glob("*.ckpt")) and not list(out.glob(".*tmp*"))


def test_num_workers_default_follows_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert train.default_num_workers() == 2
    assert train.build_parser("vqvae").parse_args(["--data_path", "x"]).num_workers == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert train.default_num_workers() == 8


def test_validation_is_bounded_and_shows_progress(tmp_path, capsys):
    from videogpt_fast.synthetic import MovingShapesDataset
    flags = [f for f in VQ_FLAGS if f != "--no_progress"]
    args = _args("vqvae", ["--data_path", "-", *flags, "--max_steps", "1", "--device", "cpu",
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


def test_progress_bar_marks_validation_metrics(dataset, tmp_path, capsys):
    """After a validation the bar shows val_* metrics, which a reader cannot take for training ones."""
    flags = [f for f in VQ_FLAGS if f != "--no_progress"]
    assert train.main(["vqvae", "--data_path", dataset, *flags, "--max_steps", "1", "--limit_val_batches", "1",
                       "--output", str(tmp_path / "run")]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    last = [line for line in bar if line.startswith("train vqvae")][-1]
    assert "val_recon_loss=" in last and " recon_loss=" not in last


def test_a_prior_too_big_for_memory_is_refused_before_it_is_built(dataset, vqvae_ckpt, tmp_path, capsys):
    """Attack: --layers 10**8 used to build 10**8 layers for hours; now a one-line error up front."""
    argv = ["gpt", "--data_path", dataset, *_set(GPT_FLAGS, "layers", str(10 ** 8)), "--vqvae", vqvae_ckpt,
            "--max_steps", "1", "--output", str(tmp_path / "o")]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "error: the prior would have" in err and "lower --hidden_dim or --layers" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_out_of_memory_is_one_line(dataset, tmp_path, capsys, monkeypatch):
    def oom(self):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 480000000000 bytes. Error code 12")
    monkeypatch.setattr(train.Trainer, "fit", oom)
    assert train.main(["vqvae", "--data_path", dataset, *VQ_FLAGS, "--max_steps", "1", "--output",
                       str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error: out of memory (" in err and "lower --batch_size, --resolution" in err and err.count("\n") == 1
    monkeypatch.setattr(train.Trainer, "fit", lambda self: (_ for _ in ()).throw(RuntimeError("other bug")))
    with pytest.raises(RuntimeError, match="other bug"):  # only allocation failures are turned into a message
        train.main(["vqvae", "--data_path", dataset, *VQ_FLAGS, "--max_steps", "1", "--output", str(tmp_path / "p")])


def test_metrics_rewrite_on_resume_is_atomic_and_a_torn_middle_line_says_what_to_do(tmp_path, monkeypatch):
    """Attack: resuming rewrote metrics.jsonl in place (a kill then lost the whole log); a torn line in
    the middle of it blocked the resume without saying what to do."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    written = []
    real = train.atomic_write
    monkeypatch.setattr(train, "atomic_write", lambda p, w: written.append(Path(p).name) or real(p, w))
    train.MetricsWriter(tmp_path, True, resume_step=2).close()
    assert written == ["metrics.jsonl"]
    assert [r["step"] for r in train.read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\n{"step": 2, "lo{"step": 3}\n{"step": 4}\n')
    with pytest.raises(ValueError, match=r"cannot resume: .*metrics\.jsonl line 2 is not a metrics record.*fix or "
                                         r"delete that line"):
        train.MetricsWriter(tmp_path, True, resume_step=4)
    assert path.read_text().count("\n") == 3  # the log is left as it was


def test_output_under_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "f").write_text("user data")
    with pytest.raises(ValueError, match=r"--output .*f/run: cannot create the folder \(Not a directory\)"):
        from videogpt_fast.run_dir import OutputLock
        OutputLock(tmp_path / "f" / "run").acquire()
    assert (tmp_path / "f").read_text() == "user data"


def test_resume_past_max_steps_is_an_error_not_a_silent_no_op(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["vqvae", "--data_path", dataset, *VQ_FLAGS, "--val_every", "-1", "--output", str(out)]
    assert train.main(base + ["--max_steps", "3"]) == 0
    before = (out / "last.ckpt").stat().st_mtime_ns
    capsys.readouterr()
    assert train.main(base + ["--max_steps", "2", "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "the checkpoint is at step 3, past --max_steps 2: nothing to train" in err and err.count("\n") == 1
    assert (out / "last.ckpt").stat().st_mtime_ns == before


def test_class_cond_with_unlabeled_test_files_fails_up_front(vqvae_ckpt, tmp_path, capsys):
    """Attack: a file directly in test/ (label -1) crashed validation in F.one_hot after training began."""
    from videogpt_fast.data.synthetic import smooth_frames, write_video_file
    root = tmp_path / "videos"
    for rel, seed in [("train/cats/a.mp4", 0), ("train/dogs/b.mp4", 1), ("test/loose.mp4", 2)]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video_file(str(root / rel), smooth_frames(6, 16, 16, seed=seed))
    out = tmp_path / "gpt"
    assert train.main(["gpt", "--data_path", str(root), *GPT_FLAGS, "--vqvae", vqvae_ckpt, "--class_cond",
                       "--max_steps", "2", "--device", "cpu", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--class_cond: 1 video file(s) directly in" in err and "test have no class" in err
    assert not list(out.glob("*.ckpt"))


def test_a_longer_cosine_schedule_on_resume_continues_from_the_closed_form():
    """Resuming a finished run (rate decayed to 0) with a larger --max_steps used to train at lr 0:
    torch's cosine schedule steps recursively from the previous rate. The retargeted schedule follows
    a fresh schedule of the new length exactly."""
    def schedule(t_max):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, t_max)

    opt, sched = schedule(4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    fresh_opt, fresh = schedule(10)
    for _ in range(4):
        fresh_opt.step()
        fresh.step()
    train.retarget_cosine(sched, 10)
    for _ in range(6):
        assert opt.param_groups[0]["lr"] == pytest.approx(fresh_opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        assert sched.get_last_lr() == pytest.approx(fresh.get_last_lr(), rel=1e-9, abs=1e-15)
        opt.step(), fresh_opt.step()
        sched.step(), fresh.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(fresh_opt.param_groups[0]["lr"], abs=1e-15)
    assert 0 < max(fresh.base_lrs)


def test_train_without_a_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: the stage is required: vqvae or gpt" in err and err.count("\n") == 2  # usage + error
