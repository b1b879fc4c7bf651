"""Where a training step's time goes: a torch.profiler breakdown of the VQ-VAE and prior steps.

Each step is the real one, :meth:`videogpt_fast.train.Trainer.train_step` (autocast, GradScaler,
the AdamW implementation, compile, channels_last, as the flags say), on synthetic clips already in
host memory. Time is attributed by category: ``conv3d_fwd``, ``conv3d_bwd``, ``axial_attention``
(the VQ-VAE's axial blocks, forward and backward), ``codebook_ema`` (search, statistics, EMA),
``attention`` (the prior's attention modules, forward and backward), ``frozen_vqvae_encode`` (the
prior step's VQ-VAE encoding, no grad), ``norm_act``, ``matmul``, ``optimizer``, ``data``
(host-to-device copy of the batch; decoding is measured by the ``data`` benchmark group) and ``other``.
Attribution: the innermost labelled range around an op (the optimiser step, the batch copy, the
codebook / axial / attention modules' forwards), else the op's name. Under ``--compile`` the fused
Triton kernels mostly land in ``other`` (module ranges are not kept in compiled graphs).

Every phase runs in its own process with a timeout (``--phase_timeout``): a slow compile or a hang
costs that phase only. ``explain`` reports torch.compile graph breaks of both loss modules on the
device (the GPU paths call the Triton kernels, which the CPU tests cannot trace); ``max_batch``
(not run by default) finds the largest per-GPU batch of each stage within ``--memory_gib`` (80).

    python -m benchmarks.profile_train --device cuda --precision bf16 --out benchmarks/results/profile_train
    python -m benchmarks.profile_train --device cuda --precision 32 --tf32 --out benchmarks/results/profile_train_tf32
    python -m benchmarks.profile_train --device cuda --compile --phase_timeout 580 --out ...   # compiled steps
    python -m benchmarks.profile_train --device cuda --phases max_batch --out ...             # largest batch in 80 GiB
    python -m benchmarks.profile_train --device cpu --tiny            # seconds; what the tests run

Writes ``OUT/profile_train.json`` and ``OUT/profile_train.md`` (and ``OUT/trace_STAGE.json``
Chrome traces with ``--trace``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

CATEGORIES = ("conv3d_fwd", "conv3d_bwd", "axial_attention", "codebook_ema", "attention", "frozen_vqvae_encode",
              "norm_act", "matmul", "optimizer", "data", "other")
PHASES = ("vqvae", "gpt", "explain", "max_batch")
DEFAULT_PHASES = ("vqvae", "gpt", "explain")

# (stage, model flags, batch): the configurations on GPU, tiny ones for --tiny
CONFIGS = {
    False: {"vqvae": (["--embedding_dim", "256", "--n_codes", "2048", "--n_hiddens", "240", "--n_res_layers", "4",
                       "--downsample", "4", "4", "4", "--sequence_length", "16", "--resolution", "128"], 4),
            "gpt": (["--hidden_dim", "576", "--heads", "4", "--layers", "8", "--sequence_length", "16",
                     "--resolution", "128"], 8)},
    True: {"vqvae": (["--embedding_dim", "8", "--n_codes", "16", "--n_hiddens", "16", "--n_res_layers", "1",
                      "--downsample", "2", "2", "2", "--sequence_length", "4", "--resolution", "16"], 2),
           "gpt": (["--hidden_dim", "24", "--heads", "2", "--layers", "2", "--sequence_length", "4",
                    "--resolution", "16"], 2)},
}

_CONV_BWD = re.compile(r"convolution_backward|conv.*(dgrad|wgrad|bwd)|slow_conv.*backward", re.I)
_CONV_FWD = re.compile(r"conv|cudnn_convolution|mkldnn_convolution", re.I)
_ATTN = re.compile(r"scaled_dot_product|flash|fmha|efficient_attention|attention|axial|blocksparse|softmax", re.I)
_CODEBOOK = re.compile(r"codebook|cdist|argmin|index_add|embedding", re.I)
_NORM = re.compile(r"batch_norm|layer_norm|group_norm|relu|gelu|threshold_backward|sigmoid", re.I)
_MATMUL = re.compile(r"\b(aten::)?(mm|addmm|bmm|matmul|linear|baddbmm)\b|gemm|cublas|cutlass|sm\d+_xmma", re.I)


def categorize(name: str, label: Optional[str], stage: str) -> str:
    """The category of an op (or kernel) called ``name`` inside the labelled range ``label``."""
    if label in ("data", "optimizer", "codebook_ema", "frozen_vqvae_encode", "axial_attention", "attention"):
        return label
    if _CONV_BWD.search(name):
        return "conv3d_bwd"
    if _CONV_FWD.search(name) and "convert" not in name.lower():
        return "conv3d_fwd"
    if _ATTN.search(name):  # attention backward runs outside the modules' forward ranges
        return "axial_attention" if stage == "vqvae" else "attention"
    if _CODEBOOK.search(name):
        return "codebook_ema"
    if _NORM.search(name):
        return "norm_act"
    if _MATMUL.search(name):
        return "matmul"
    return "other"


# ----------------------------------------------------------------------------------------------
# one phase (in a child process)
# ----------------------------------------------------------------------------------------------
class _Range:
    """A record_function range opened by a forward pre-hook and closed by the forward hook."""

    def __init__(self, name: str):
        self.name, self.stack = name, []

    def pre(self, *_):
        rf = torch.autograd.profiler.record_function(self.name)
        rf.__enter__()
        self.stack.append(rf)

    def post(self, *_):
        if self.stack:
            self.stack.pop().__exit__(None, None, None)


def _label_modules(model: torch.nn.Module, stage: str) -> List[Any]:
    from videogpt_fast.attention import MultiHeadAttention
    from videogpt_fast.vqvae import AxialBlock, Codebook
    handles = []

    def add(mod, name):
        r = _Range(name)
        handles.append(mod.register_forward_pre_hook(r.pre))
        handles.append(mod.register_forward_hook(r.post))

    if stage == "vqvae":
        for m in model.modules():
            if isinstance(m, Codebook):
                add(m, "codebook_ema")
            elif isinstance(m, AxialBlock):
                add(m, "axial_attention")
    else:
        for m in (model.vqvae.encoder, model.vqvae.pre_vq_conv, model.vqvae.codebook):
            add(m, "frozen_vqvae_encode")
        for m in model.attn_stack.modules():
            if isinstance(m, MultiHeadAttention):
                add(m, "attention")
    return handles


def _train_args(stage: str, a: argparse.Namespace, workdir: Path) -> argparse.Namespace:
    from videogpt_fast import train
    flags, batch = CONFIGS[a.tiny][stage]
    argv = ["--data_path", "-", *flags, "--batch_size", str(a.batch or batch), "--num_workers", "0",
            "--max_steps", str(10 ** 6), "--val_every", "-1", "--no_progress", "--precision", a.precision,
            "--device", a.device, "--output", str(workdir / stage), "--activation_checkpointing",
            a.activation_checkpointing]
    argv += ["--compile"] * a.compile + ["--tf32"] * a.tf32 + ["--channels_last_3d"] * a.channels_last_3d
    if stage == "gpt":
        argv += ["--vqvae", str(_vqvae_checkpoint(a, workdir))]
    args = train.build_parser(stage).parse_args(argv)
    args.stage = stage
    return args


def _vqvae_checkpoint(a: argparse.Namespace, workdir: Path) -> Path:
    """A VQ-VAE of the prior's configuration with random weights (speed does not depend on them)."""
    from videogpt_fast.checkpoint import atomic_save, lightning_checkpoint
    from videogpt_fast.vqvae import VQVAE
    from videogpt_fast import train
    flags, _ = CONFIGS[a.tiny]["vqvae"]
    model = VQVAE(train.model_namespace(train.build_parser("vqvae").parse_args(["--data_path", "-", *flags])))
    model.codebook._need_init = False
    model.codebook.N.fill_(1.0)  # an initialised codebook
    return atomic_save(lightning_checkpoint(model), workdir / "vqvae.ckpt")


def _trainer(stage: str, a: argparse.Namespace, workdir: Path):
    from videogpt_fast import train
    from videogpt_fast.data.synthetic import MovingShapesDataset
    args = _train_args(stage, a, workdir)
    data = MovingShapesDataset(args.batch_size, args.sequence_length, args.resolution)
    with contextlib.redirect_stdout(sys.stderr):  # the run-start messages
        trainer = train.Trainer(args, data)
    batch = {"video": data.videos[:args.batch_size].clone(), "label": torch.tensor(data.labels[:args.batch_size])}
    if trainer.device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return trainer, batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_profile(stage: str, a: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    from benchmarks.harness import summarize, time_callable
    trainer, host_batch = _trainer(stage, a, workdir)
    dev = trainer.device

    def step():
        with torch.autograd.profiler.record_function("data"):
            batch = trainer._to_device(host_batch)
        trainer.train_step(batch)

    t0 = time.perf_counter()
    for _ in range(a.warmup):
        step()
    _sync(dev)
    warmup_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = time_callable(step, dev, warmup=0, min_time_s=0.0, max_iters=a.steps, min_iters=a.steps)
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None

    # the profiled steps, with labelled ranges
    opt_range = _Range("optimizer")
    hooks = _label_modules(trainer.model, stage)
    hooks += [trainer.optimizer.register_step_pre_hook(lambda *_: opt_range.pre()),
              trainer.optimizer.register_step_post_hook(lambda *_: opt_range.post())]
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(a.steps):
            step()
        _sync(dev)
    for h in hooks:
        h.remove()
    cats = _attribute(prof, stage, dev)
    top = _top_ops(prof, dev)
    if a.trace:
        prof.export_chrome_trace(str(Path(a.out) / f"trace_{stage}.json"))
    per_step = {k: v / a.steps for k, v in cats.items()}
    b = trainer.args.batch_size
    res: Dict[str, Any] = {
        "status": "ok", "batch": b, "step_ms": statistics.median(times), "timing": summarize(times),
        "warmup_s": round(warmup_s, 2), "peak_memory_gib": peak, "clips_per_s": b / (statistics.median(times) / 1e3),
        "categories_ms": per_step, "profiled_total_ms": sum(per_step.values()), "top_ops_ms": top,
        "time_basis": "CUDA kernel time (self)" if dev.type == "cuda" else "CPU op self time",
        "flags": {k: getattr(trainer.args, k) for k in ("precision", "compile", "tf32", "channels_last_3d",
                                                         "activation_checkpointing")},
    }
    if stage == "gpt":
        n_tokens = 1
        for s in trainer.model.shape:
            n_tokens *= int(s)
        res["tokens_per_s"] = res["clips_per_s"] * n_tokens
    return res


def _labels(evt) -> Optional[str]:
    """The innermost labelled range enclosing a profiler event."""
    p = evt.cpu_parent
    while p is not None:
        if p.name in CATEGORIES:
            return p.name
        p = p.cpu_parent
    return None


def _attribute(prof, stage: str, dev: torch.device) -> Dict[str, float]:
    """Milliseconds per category over the profiled steps. CPU: the self time of every op and range.
    CUDA: the duration of every kernel / copy, attributed through the CPU op or range that launched
    it (the profiler's correlation id), else by its own name."""
    from torch.autograd import DeviceType
    out = {c: 0.0 for c in CATEGORIES}
    events = [e for e in prof.events() if not e.is_async]
    if dev.type != "cuda":
        for evt in events:
            us = float(evt.self_cpu_time_total or 0.0)
            if us > 0:
                label = evt.name if evt.name in CATEGORIES else _labels(evt)
                out[categorize(evt.name, label, stage)] += us / 1e3
        return out
    # ops and ranges (linked id 0) by their correlation id; runtime calls have ids of their own
    cpu_by_id = {e.id: e for e in events if e.device_type == DeviceType.CPU and not getattr(e, "linked_correlation_id", 0)}
    for evt in events:
        if evt.device_type != DeviceType.CUDA:
            continue
        us = float(evt.time_range.end - evt.time_range.start)
        op = cpu_by_id.get(getattr(evt, "linked_correlation_id", -1))
        label = None if op is None else (op.name if op.name in CATEGORIES else _labels(op))
        name = evt.name if op is None else f"{op.name} {evt.name}"
        out[categorize(name, label, stage)] += us / 1e3
    return out


def _top_ops(prof, dev: torch.device, n: int = 15) -> Dict[str, float]:
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0) or 0.0, reverse=True)[:n]
    return {e.key: round((getattr(e, key, 0.0) or 0.0) / 1e3, 4) for e in rows}


def _fits(stage: str, a: argparse.Namespace, workdir: Path, batch: int) -> bool:
    """Two training steps at ``batch`` run without running out of device memory."""
    import gc
    trainer = None
    try:
        a2 = argparse.Namespace(**{**vars(a), "batch": batch})
        trainer, host_batch = _trainer(stage, a2, workdir)
        for _ in range(2):
            trainer.train_step(trainer._to_device(host_batch))
        _sync(trainer.device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del trainer
        gc.collect()
        torch.cuda.empty_cache()


def run_max_batch(a: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    """The largest per-GPU batch of each stage whose steps fit in ``--memory_gib`` (CUDA only):
    doubling from 1, then bisection between the last fit and the first failure."""
    if not a.device.startswith("cuda"):
        return {"status": "ok", "skipped": "CUDA only"}
    dev = torch.device(a.device)
    total = torch.cuda.get_device_properties(dev).total_memory / 2 ** 30
    torch.cuda.set_per_process_memory_fraction(min(1.0, a.memory_gib / total), dev)
    out: Dict[str, Any] = {"status": "ok", "memory_gib": a.memory_gib, "device_gib": round(total, 1)}
    for stage in ("vqvae", "gpt"):
        lo, hi = largest_fitting(lambda b, st=stage: _fits(st, a, workdir, b), a.max_batch_limit)
        out[stage] = {"largest_batch": lo, "first_failing": hi}
    return out


def largest_fitting(fits, limit: int):
    """``(largest b <= limit with fits(b), smallest failing b or None)``, assuming fits is monotone:
    doubling from 1, then bisection. ``(0, 1)`` when even 1 does not fit."""
    lo, hi = 0, 1
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, (hi if hi <= limit else None)


def run_explain(a: argparse.Namespace, workdir: Path) -> Dict[str, Any]:
    """torch._dynamo.explain of each stage's loss module on the device (graph breaks, with reasons)."""
    from videogpt_fast import train
    out: Dict[str, Any] = {"status": "ok"}
    for stage in ("vqvae", "gpt"):
        trainer, host_batch = _trainer(stage, a, workdir)
        batch = trainer._to_device(host_batch)
        torch._dynamo.reset()
        net = train.LossModule(trainer.model, stage)
        with trainer._autocast():
            ex = torch._dynamo.explain(net)(batch)
        out[stage] = {"graphs": ex.graph_count, "graph_breaks": ex.graph_break_count,
                      "reasons": sorted({f"{b.reason.splitlines()[0]} at "
                                         f"{b.user_stack[-1].filename}:{b.user_stack[-1].lineno}"
                                         if b.user_stack else b.reason.splitlines()[0] for b in ex.break_reasons})}
    return out


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_train", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models (CPU smoke test)")
    p.add_argument("--phases", default=",".join(DEFAULT_PHASES),
                   help=f"comma-separated subset of {','.join(PHASES)} (default {','.join(DEFAULT_PHASES)})")
    p.add_argument("--precision", choices=("32", "bf16", "16"), default="bf16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--channels_last_3d", action="store_true")
    p.add_argument("--activation_checkpointing", default="none")
    p.add_argument("--batch", type=int, default=None, help="per-stage default: VQ-VAE 4, prior 8 (tiny: 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--steps", type=int, default=10, help="timed steps, then as many profiled steps")
    p.add_argument("--phase_timeout", type=float, default=300.0, help="seconds per phase (its own process)")
    p.add_argument("--memory_gib", type=float, default=80.0, help="max_batch: device memory allowed (GiB)")
    p.add_argument("--max_batch_limit", type=int, default=256, help="max_batch: largest batch tried")
    p.add_argument("--trace", action="store_true", help="also write Chrome traces")
    p.add_argument("--out", default="benchmarks/results/profile_train")
    p.add_argument("--_phase", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    return p


def _child(a: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = {"explain": run_explain, "max_batch": run_max_batch}.get(a._phase)
        res = run(a, work) if run else run_profile(a._phase, a, work)
    Path(a._result).write_text(json.dumps(res, default=str))
    return 0


def _table(results: Dict[str, Any]) -> str:
    lines = [f"# Training step profile ({results['env']['device_name']}, {results['settings']})", "",
             "Per step, ms (" + ", ".join(sorted({r.get('time_basis', '') for r in results['phases'].values()
                                                  if r.get('status') == 'ok' and 'time_basis' in r})) + ")", "",
             "| category | " + " | ".join(s for s in ("vqvae", "gpt") if s in results["phases"]) + " |",
             "|---|" + "---|" * sum(s in results["phases"] for s in ("vqvae", "gpt"))]
    stages = [s for s in ("vqvae", "gpt") if s in results["phases"]]

    def cell(s, c):
        r = results["phases"][s]
        return f"{r['categories_ms'][c]:.3f}" if r.get("status") == "ok" else r.get("status", "?")

    for c in CATEGORIES:
        lines.append(f"| {c} | " + " | ".join(cell(s, c) for s in stages) + " |")
    for key, fmt in (("step_ms", "{:.3f}"), ("clips_per_s", "{:.2f}"), ("tokens_per_s", "{:.0f}"),
                     ("peak_memory_gib", "{:.2f}")):
        vals = []
        for s in stages:
            v = results["phases"][s].get(key)
            vals.append(fmt.format(v) if isinstance(v, (int, float)) else "-")
        lines.append(f"| **{key}** (untraced) | " + " | ".join(vals) + " |")
    ex = results["phases"].get("explain")
    if ex:
        lines += ["", "torch.compile graph breaks: " + (
            ", ".join(f"{s}: {ex[s]['graph_breaks']}" for s in ("vqvae", "gpt") if s in ex)
            if ex.get("status") == "ok" else ex.get("status", "?"))]
    mb = results["phases"].get("max_batch")
    if mb:
        lines += ["", f"Largest batch within {mb.get('memory_gib', '?')} GiB: " + (
            ", ".join(f"{s}: {mb[s]['largest_batch']}" for s in ("vqvae", "gpt") if s in mb)
            or mb.get("skipped", mb.get("status", "?")))]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    if a._phase:
        return _child(a)
    phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    bad = [p for p in phases if p not in PHASES]
    if bad:
        print(f"profile_train: error: unknown phases {bad} (choose from {PHASES})", file=sys.stderr)
        return 2
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("profile_train: error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from benchmarks.gpu_check import run_limited
    from benchmarks.harness import env_info
    settings = (f"precision {a.precision}, compile {a.compile}, tf32 {a.tf32}, channels_last_3d {a.channels_last_3d}, "
                f"activation_checkpointing {a.activation_checkpointing}, tiny {a.tiny}")
    results: Dict[str, Any] = {"env": env_info(torch.device(a.device)), "settings": settings, "phases": {},
                               "note": "categories: self time of each op/kernel, attributed as the module "
                                       "docstring says; step_ms etc. from untraced steps"}
    child_argv = [x for x in (argv if argv is not None else sys.argv[1:])]
    for phase in phases:
        res_file = out / f".{phase}.json"
        res_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.profile_train", *child_argv, "--_phase", phase,
               "--_result", str(res_file)]
        log = out / f"{phase}.log"
        # its own process group, killed whole at the limit (compile workers too), as gpu_check's phases
        r = run_limited(cmd, log, a.phase_timeout, dict(os.environ))
        if r["status"] == "ok" and res_file.is_file():
            results["phases"][phase] = json.loads(res_file.read_text())
        elif r["status"] == "timeout":
            results["phases"][phase] = {"status": f"timeout after {a.phase_timeout:g} s", "log": str(log)}
        else:
            results["phases"][phase] = {"status": f"failed (exit {r['rc']})", "log": str(log),
                                        "log_tail": log.read_text()[-4000:]}
        results["phases"][phase]["wall_s"] = r["wall_s"]
        res_file.unlink(missing_ok=True)
        print(f"[profile_train] {phase}: {results['phases'][phase]['status']} "
              f"({results['phases'][phase]['wall_s']} s)", flush=True)
    (out / "profile_train.json").write_text(json.dumps(results, indent=1, default=str))
    table = _table(results)
    (out / "profile_train.md").write_text(table)
    print(table)
    return 0 if all(r.get("status") == "ok" for r in results["phases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
