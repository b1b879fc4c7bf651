"""Training-speed options (videogpt_fast.perf via train): graph-break-free torch.compile, TF32,
the AdamW implementation, channels_last_3d, selective activation checkpointing, DDP buckets and the
codebook EMA under DDP (gloo, 2 spawned ranks), and the profiling script on CPU."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from videogpt_fast import perf, train
from videogpt_fast.gpt import VideoGPT
from videogpt_fast.data.synthetic import MovingShapesDataset
from videogpt_fast.vqvae import VQVAE

ROOT = Path(__file__).resolve().parents[1]
VQ_FLAGS = ["--sequence_length", "4", "--resolution", "16", "--batch_size", "2", "--num_workers", "0",
            "--embedding_dim", "8", "--n_codes", "16", "--n_hiddens", "16", "--n_res_layers", "1",
            "--downsample", "2", "2", "2", "--log_every", "1", "--no_progress", "--val_every", "-1"]


def _vq(n_res_layers: int = 1, seed: int = 0) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(argparse.Namespace(embedding_dim=8, n_codes=16, n_hiddens=16, n_res_layers=n_res_layers,
                                    downsample=[2, 2, 2], sequence_length=4, resolution=16))


def _gpt(vq: VQVAE, seed: int = 0, **kw) -> VideoGPT:
    a = dict(vqvae="-", n_cond_frames=0, class_cond=False, hidden_dim=24, heads=2, layers=2, dropout=0.2,
             attn_type="full", attn_dropout=0.3, sequence_length=4, resolution=16)
    a.update(kw)
    torch.manual_seed(seed)
    return VideoGPT(argparse.Namespace(**a), vqvae=vq)


def _batch(seed: int = 1, b: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(b, 3, 4, 16, 16, generator=g) - 0.5, "label": torch.tensor([0, 2][:b])}


def _grads(model: torch.nn.Module) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ==============================================================================================
# torch.compile
# ==============================================================================================
@pytest.mark.parametrize("stage,kw,ckpt", [("vqvae", {}, "none"), ("gpt", {}, "none"),
                                           ("gpt", dict(n_cond_frames=1, class_cond=True, class_cond_dim=3), "none"),
                                           ("vqvae", {}, "attention"), ("gpt", {}, "attention")])
def test_train_step_has_no_graph_break(stage, kw, ckpt):
    """torch._dynamo.explain: the whole loss module (codebook init + EMA included, with or without
    activation checkpointing) is one graph."""
    vq = _vq()
    model = vq if stage == "vqvae" else _gpt(vq, **kw)
    perf.apply_activation_checkpointing(model, stage, ckpt)
    net = train.LossModule(model, stage).train()
    torch._dynamo.reset()
    ex = torch._dynamo.explain(net)(_batch())
    reasons = [f"{b.reason.splitlines()[0]} at {b.user_stack[-1] if b.user_stack else '?'}" for b in ex.break_reasons]
    assert ex.graph_break_count == 0 and ex.graph_count == 1, reasons


def _has_cxx() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.mark.slow  # two inductor compilations (codebook-init step, EMA step): minutes on a busy CPU
@pytest.mark.skipif(not _has_cxx(), reason="inductor on CPU needs a C++ compiler (g++/c++/clang++ not found)")
def test_compile_inductor_losses_match_eager(tmp_path):
    """--compile (inductor on CPU) trains 2 VQ-VAE steps (codebook init, then EMA) with the losses of eager."""
    import torch._inductor.config as inductor_config
    losses = {}
    # fallback_random: the codebook init draws the same numbers. inductor's own patch(), not monkeypatch:
    # monkeypatch's undo left the config without the option, failing every later compile in the session
    with inductor_config.patch(fallback_random=True):
        for mode in ("eager", "compile"):
            torch._dynamo.reset()
            args = train.build_parser("vqvae").parse_args(
                ["--data_path", "-", *VQ_FLAGS, "--max_steps", "2", "--output", str(tmp_path / mode)]
                + (["--compile"] if mode == "compile" else []))
            args.stage = "vqvae"
            hist = train.Trainer(args, MovingShapesDataset(6, 4, 16)).fit()
            losses[mode] = [r["loss"] for r in hist if "loss" in r]
    assert len(losses["eager"]) == 2
    for a, b in zip(losses["eager"], losses["compile"]):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), losses


# ==============================================================================================
# TF32, optimiser, start-up report
# ==============================================================================================
def test_tf32_is_a_reported_noop_on_cpu():
    before = torch.get_float32_matmul_precision()
    msgs = perf.configure_backends(torch.device("cpu"), tf32=True, cudnn_benchmark=True)
    assert any("no effect on CPU" in m for m in msgs)
    assert torch.get_float32_matmul_precision() == before
    assert perf.configure_backends(torch.device("cpu"), tf32=False, cudnn_benchmark=True) == []


def test_tf32_on_cuda_sets_matmul_and_cudnn(monkeypatch):
    """The CUDA branch (flags only; no GPU needed to set them): --tf32 switches fp32 matmuls to TF32."""
    prec, tf32, bench = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32,
                         torch.backends.cudnn.benchmark)
    try:
        torch.set_float32_matmul_precision("highest")
        msgs = perf.configure_backends(torch.device("cuda", 0), tf32=False, cudnn_benchmark=False)
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.benchmark
        assert any("TF32 off" in m for m in msgs)
        msgs = perf.configure_backends(torch.device("cuda", 0), tf32=True, cudnn_benchmark=True)
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
        assert any("TF32 on" in m for m in msgs)
    finally:
        torch.set_float32_matmul_precision(prec)
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = tf32, bench


def test_trainer_flags_on_cpu(tmp_path, capsys):
    """A one-step run with --tf32 --channels_last_3d --activation_checkpointing attention: foreach
    AdamW, channels-last convolution weights, and the start-up report saying all of it."""
    assert perf.optimizer_kwargs(torch.device("cuda", 0))[0] == {"fused": True}
    assert perf.optimizer_kwargs(torch.device("cpu"))[0] == {"foreach": True}
    args = train.build_parser("vqvae").parse_args(["--data_path", "-", *VQ_FLAGS, "--max_steps", "1", "--tf32",
                                                   "--channels_last_3d", "--activation_checkpointing", "attention",
                                                   "--output", str(tmp_path)])
    args.stage = "vqvae"
    t = train.Trainer(args, MovingShapesDataset(2, 4, 16))
    assert t.optimizer.defaults["foreach"] is True and not t.optimizer.defaults["fused"]
    w = t.model.encoder.conv_last.conv.weight
    assert w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous()
    hist = t.fit()
    assert [r["step"] for r in hist if "loss" in r] == [1] and math.isfinite(hist[0]["loss"])
    out = capsys.readouterr().out
    assert "performance:" in out and "AdamW foreach" in out and "--tf32 has no effect on CPU" in out
    assert "channels_last_3d on" in out and "axial attention of VQ-VAE residual blocks [0, 1]" in out


# ==============================================================================================
# channels_last_3d
# ==============================================================================================
def test_channels_last_3d_same_numbers():
    """Loss, reconstruction and every gradient of a VQ-VAE step agree with the contiguous layout."""
    out = {}
    for cl in (False, True):
        vq = _vq()
        vq.codebook._need_init = False
        x = _batch()["video"]
        if cl:
            perf.to_channels_last_3d(vq)
            x = perf.channels_last_batch({"video": x})["video"]
            assert x.is_contiguous(memory_format=torch.channels_last_3d)
            assert vq.encoder.convs[0].conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
        recon_loss, x_recon, vqo = vq(x)
        (recon_loss + vqo["commitment_loss"]).backward()
        out[cl] = (recon_loss.detach(), x_recon.detach(), vqo["encodings"], _grads(vq), vq.codebook.embeddings.clone())
    (l0, r0, c0, g0, e0), (l1, r1, c1, g1, e1) = out[False], out[True]
    assert torch.equal(c0, c1)
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r1, r0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e1, e0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)


# ==============================================================================================
# selective activation checkpointing
# ==============================================================================================
@pytest.mark.parametrize("spec,cond", [("attention", False), ("all", False), ("1", False), ("0,1", False),
                                       # frame (cross-attention) + class conditioning; its ResNet-34 is slow on CPU
                                       pytest.param("attention", True, marks=pytest.mark.slow)])
def test_prior_checkpointing_same_gradients(spec, cond):
    """Recomputed attention / blocks give the same loss and gradients (dropout replayed)."""
    kw = dict(n_cond_frames=1, class_cond=True, class_cond_dim=3) if cond else {}
    res = {}
    for s in ("none", spec):
        m = _gpt(_vq(), **kw).train()
        desc = perf.apply_activation_checkpointing(m, "gpt", perf.activation_checkpointing_arg(s))
        torch.manual_seed(7)
        loss = m.compute_loss(_batch())
        loss.backward()
        res[s] = (loss.detach(), _grads(m), desc)
    (l0, g0, _), (l1, g1, desc) = res["none"], res[spec]
    assert "none" not in desc
    wrapped = [n for n, mod in m.named_modules() if getattr(mod, "_activation_checkpointed", False)]
    assert wrapped, desc
    assert torch.equal(l0, l1)
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-6, atol=1e-7, msg=n)


def test_checkpointing_recomputes_in_backward():
    """The wrapped module's forward runs again during backward (so its activations were not kept)."""
    m = _gpt(_vq()).train()
    perf.apply_activation_checkpointing(m, "gpt", "attention")
    calls = []
    inner = m.attn_stack.attn_nets[0].attn.attn
    inner.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    loss = m.compute_loss(_batch())
    assert len(calls) == 1
    loss.backward()
    assert len(calls) == 2


@pytest.mark.parametrize("spec", ["attention", "0", "1"])
def test_vqvae_checkpointing_same_gradients_and_batchnorm_stats(spec):
    res = {}
    for s in ("none", spec):
        vq = _vq()
        perf.apply_activation_checkpointing(vq, "vqvae", perf.activation_checkpointing_arg(s))
        recon_loss, _, vqo = vq(_batch()["video"])
        (recon_loss + vqo["commitment_loss"]).backward()
        bn = {n: b.clone() for n, b in vq.named_buffers() if "running" in n or "num_batches" in n}
        res[s] = (recon_loss.detach(), _grads(vq), bn)
    (l0, g0, b0), (l1, g1, b1) = res["none"], res[spec]
    assert torch.equal(l0, l1)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-6, atol=1e-7, msg=n)
    for n in b0:  # BatchNorms ran once per step: identical running statistics
        assert torch.equal(b1[n], b0[n]), n


def test_checkpointing_bad_specs():
    with pytest.raises(ValueError, match="none, attention, all or comma-separated"):
        perf.activation_checkpointing_arg("attn")
    with pytest.raises(ValueError, match="none, attention, all or comma-separated"):
        perf.activation_checkpointing_arg("-1")
    assert perf.activation_checkpointing_arg(True) == "all" and perf.activation_checkpointing_arg("2,0") == (0, 2)
    with pytest.raises(ValueError, match=r"out of range: the model has 2 attention blocks"):
        perf.apply_activation_checkpointing(_gpt(_vq()), "gpt", (2,))
    with pytest.raises(ValueError, match="BatchNorms"):
        perf.apply_activation_checkpointing(_vq(), "vqvae", "all")


def test_cli_bad_checkpointing_spec_exits_2(tmp_path, capsys):
    code = train.main(["vqvae", "--data_path", str(tmp_path / "none.hdf5"), *VQ_FLAGS, "--activation_checkpointing",
                       "bogus", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "error: --activation_checkpointing takes none, attention, all" in err[0], err


# ==============================================================================================
# DDP (gloo, 2 ranks)
# ==============================================================================================
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _ddp_run(rank, world, out_dir, sync_stats=True)
        from videogpt_fast import codebook as codebook_mod
        codebook_mod._all_reduce_sum = lambda t: t  # negative control: each rank keeps its own EMA statistics
        _ddp_run(rank, world, out_dir, sync_stats=False)
    finally:
        dist.destroy_process_group()


def _ddp_run(rank: int, world: int, out_dir: str, sync_stats: bool) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    vq = _vq(n_res_layers=1, seed=0)
    n_params = sum(1 for p in vq.parameters() if p.requires_grad)
    ddp = torch.nn.parallel.DistributedDataParallel(train.LossModule(vq, "vqvae"),
                                                    **perf.ddp_kwargs(torch.device("cpu"), 0.02))
    ready = {"n": 0}
    for p in vq.parameters():
        p.register_post_accumulate_grad_hook(lambda _p: ready.__setitem__("n", ready["n"] + 1))
    at_hook = []

    def hook(state, bucket):  # how many gradients existed when each bucket's all-reduce started
        at_hook.append(ready["n"])
        return default_hooks.allreduce_hook(state, bucket)

    ddp.register_comm_hook(dist.group.WORLD, hook)
    opt = torch.optim.AdamW(vq.parameters(), **perf.optimizer_kwargs(torch.device("cpu"))[0])
    report = {"steps": []}
    for step in range(3):
        ready["n"], at_hook[:] = 0, []
        loss, _ = ddp(_batch(seed=10 + 2 * step + rank))  # different clips on each rank
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in vq.parameters()])
        cb = torch.cat([vq.codebook.embeddings.flatten(), vq.codebook.N, vq.codebook.z_avg.flatten()])
        gathered = []
        for t in (g, cb, loss.detach().reshape(1)):
            parts = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(parts, t)
            gathered.append(parts)
        report["steps"].append(dict(
            grads_equal=torch.equal(*gathered[0]), codebook_equal=torch.equal(*gathered[1]),
            losses_differ=not torch.equal(*gathered[2]), hooks_at=list(at_hook), n_params=n_params))
        opt.step()
        opt.zero_grad(set_to_none=True)
    log = ddp._get_ddp_logging_data()
    report.update(static_graph=bool(log.get("static_graph")), bucket_view=bool(log.get("gradient_as_bucket_view")),
                  bucket_cap=int(ddp.bucket_bytes_cap))
    if rank == 0:
        Path(out_dir, f"ddp_{int(sync_stats)}.json").write_text(json.dumps(report))


def test_ddp_buckets_overlap_backward_and_codebook_stays_in_sync(tmp_path):
    """Two gloo ranks on different clips: DDP is configured as perf.ddp_kwargs says, several buckets
    start their all-reduce before backward has produced every gradient (overlap), gradients are
    identical across ranks, and the codebook EMA buffers too (all-reduced statistics). Negative
    control: without the statistics' all-reduce the EMA buffers differ across ranks."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r = json.loads((tmp_path / "ddp_1.json").read_text())
    assert r["static_graph"] and r["bucket_view"] and r["bucket_cap"] == int(0.02 * 2 ** 20)
    for s in r["steps"]:
        assert s["losses_differ"] and s["grads_equal"] and s["codebook_equal"], s
    last = r["steps"][-1]  # buckets rebuilt in gradient-ready order after the first step
    assert len(last["hooks_at"]) > 1, last
    assert last["hooks_at"][0] < last["n_params"], last  # the first all-reduce started mid-backward
    r = json.loads((tmp_path / "ddp_0.json").read_text())
    assert r["steps"][0]["grads_equal"] and not r["steps"][-1]["codebook_equal"]


def test_ddp_bucket_flag_validation():
    assert "bucket_cap_mb" not in perf.ddp_kwargs(torch.device("cpu"))  # torch's default with its 1 MiB first bucket
    with pytest.raises(ValueError, match="must be > 0"):
        perf.ddp_kwargs(torch.device("cpu"), 0.0)
    with pytest.raises(ValueError, match=">= 1 with --compile"):
        perf.ddp_kwargs(torch.device("cpu"), 0.5, compiled=True)


# ==============================================================================================
# profiling script
# ==============================================================================================
def test_profile_train_script_on_cpu(tmp_path):
    """benchmarks.profile_train --device cpu --tiny: both phases run, every category is filled
    where the stage has it and empty where it does not."""
    from benchmarks import profile_train
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "benchmarks.profile_train", "--device", "cpu", "--tiny", "--steps", "1",
                        "--warmup", "1", "--precision", "32", "--phases", "vqvae,gpt", "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "profile_train.json").read_text())
    for stage in ("vqvae", "gpt"):
        ph = res["phases"][stage]
        assert ph["status"] == "ok", ph
        cats = ph["categories_ms"]
        assert set(cats) == set(profile_train.CATEGORIES)
        assert ph["step_ms"] > 0 and cats["optimizer"] > 0 and cats["matmul"] > 0
    vq, gpt = res["phases"]["vqvae"]["categories_ms"], res["phases"]["gpt"]["categories_ms"]
    assert vq["conv3d_fwd"] > 0 and vq["conv3d_bwd"] > 0 and vq["axial_attention"] > 0 and vq["codebook_ema"] > 0
    assert vq["attention"] == 0 and vq["frozen_vqvae_encode"] == 0  # the prior's categories
    assert gpt["attention"] > 0 and gpt["frozen_vqvae_encode"] > 0 and gpt["conv3d_bwd"] == 0  # frozen: no conv grads
    assert res["phases"]["gpt"]["tokens_per_s"] > 0
    assert (tmp_path / "profile_train.md").read_text().count("|") > 10


@pytest.mark.parametrize("cap,limit,expect", [(13, 256, (13, 14)), (1, 256, (1, 2)), (0, 256, (0, 1)),
                                              (300, 256, (256, None)), (64, 100, (64, 65))])
def test_profile_train_batch_search(cap, limit, expect):
    """max_batch's search (the phase itself needs CUDA): exact, and only monotone probes."""
    from benchmarks import profile_train
    probes = []
    fits = lambda b: probes.append(b) or b <= cap  # noqa: E731
    assert profile_train.largest_fitting(fits, limit) == expect
    assert all(1 <= b <= limit for b in probes) and len(probes) <= 2 * math.log2(limit) + 2
