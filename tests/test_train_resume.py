"""Checkpoints and --resume (videogpt_fast.train.resume): exact resume, a killed run, leftovers, the schedule."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TRAIN_GPT_FLAGS as GPT_FLAGS, TRAIN_VQ_FLAGS as VQ_FLAGS, subprocess_env, train_losses
from videogpt_fast import train
from videogpt_fast.checkpoint import load_vqvae, safe_load


def _state(path: Path) -> dict:
    return safe_load(path)["state_dict"]


def test_resume_vqvae_is_exact(shapes_hdf5, tmp_path, capsys):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    base = ["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "6", "--save_every", "2"]
    train.main(base + ["--output", str(full)])
    # step 4 is in the middle of epoch 1 (3 batches per epoch), after the codebook initialised
    train.main(base + ["--output", str(resumed), "--resume", str(full / "epoch=1-step=4.ckpt")])
    a, b = train_losses(full), train_losses(resumed)
    assert sorted(b) == [5, 6]
    assert [a[5], a[6]] == [b[5], b[6]]  # bitwise
    sa, sb = _state(full / "last.ckpt"), _state(resumed / "last.ckpt")
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # resuming a finished run says there is nothing to train (not a silent no-op)
    capsys.readouterr()
    assert train.main(base + ["--output", str(full), "--resume", "auto"]) == 0
    assert "already --max_steps 6: nothing to train" in capsys.readouterr().out
    assert sorted(train_losses(full)) == [1, 2, 3, 4, 5, 6]


def test_resume_gpt_is_exact_with_dropout_and_cosine(shapes_hdf5, tiny_vqvae_ckpt, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    base = ["gpt", "--data_path", shapes_hdf5, *GPT_FLAGS, "--vqvae", tiny_vqvae_ckpt, "--max_steps", "5",
            "--save_every", "2", "--dropout", "0.3", "--attn_dropout", "0.3", "--gradient_clip_val", "0.5"]
    train.main(base + ["--output", str(full)])
    train.main(base + ["--output", str(resumed), "--resume", str(full / "epoch=0-step=2.ckpt")])
    a, b = train_losses(full), train_losses(resumed)
    assert sorted(b) == [3, 4, 5]
    assert [a[s] for s in (3, 4, 5)] == [b[s] for s in (3, 4, 5)]
    lrs = {r["step"]: r["lr"] for r in train.read_metrics(full / "metrics.jsonl") if "lr" in r}
    assert lrs[1] == pytest.approx(3e-4) and lrs[5] < lrs[3] < lrs[1]  # cosine schedule over max_steps
    sa, sb = safe_load(full / "last.ckpt"), safe_load(resumed / "last.ckpt")
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    assert sa["lr_schedulers"][0]["last_epoch"] == sb["lr_schedulers"][0]["last_epoch"] == 5


def test_killed_run_resumes_from_last_checkpoint(shapes_hdf5, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "videogpt_fast.train", "vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS,
           "--max_steps", "100000", "--save_every", "2", "--val_every", "-1", "--output", str(out)]
    log = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=log)
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
    train.main(["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", str(step + 2), "--save_every", "2",
                "--val_every", "-1", "--output", str(out), "--resume", "auto"])
    assert safe_load(out / "last.ckpt")["global_step"] == step + 2
    steps = [r["step"] for r in train.read_metrics(out / "metrics.jsonl")]
    assert steps == list(range(1, step + 3))  # what the killed run logged after its checkpoint is dropped


def test_resume_after_a_killed_save(shapes_hdf5, tmp_path, caplog):
    """Leftovers of a killed run: stale temporaries are removed, the keep list comes from disk, a torn
    metrics line is dropped; last.ckpt is the newest periodic checkpoint's file, not a copy."""
    import logging
    out = tmp_path / "run"
    base = ["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--save_every", "1", "--keep_checkpoints", "2",
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


def test_resume_checks_args_against_weights_first(shapes_hdf5, tiny_vqvae_ckpt, tmp_path, capsys):
    raw = safe_load(tiny_vqvae_ckpt)
    raw["hyper_parameters"]["args"].n_codes = 2 ** 25
    liar = tmp_path / "liar.ckpt"
    torch.save(raw, liar)
    assert train.main(["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "5", "--resume", str(liar),
                       "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(liar) in err and "do not match its weights" in err and "codebook.embeddings" in err
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 64)
    assert train.main(["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--max_steps", "5", "--resume",
                       str(tmp_path / "junk.ckpt"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "junk.ckpt" in err and err.count("\n") == 1


def test_resume_past_max_steps_is_an_error_not_a_silent_no_op(shapes_hdf5, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["vqvae", "--data_path", shapes_hdf5, *VQ_FLAGS, "--val_every", "-1", "--output", str(out)]
    assert train.main(base + ["--max_steps", "3"]) == 0
    before = (out / "last.ckpt").stat().st_mtime_ns
    capsys.readouterr()
    assert train.main(base + ["--max_steps", "2", "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "the checkpoint is at step 3, past --max_steps 2: nothing to train" in err and err.count("\n") == 1
    assert (out / "last.ckpt").stat().st_mtime_ns == before


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
