"""Sampling wall time: videogpt_fast.sample (static KV cache, CUDA graph, decode-attention op)
against the original algorithm (the per-position loop through ``VideoGPT.forward(decode_step=i)``,
run in the same process), plus the per-step time against the HBM roofline.

Cases (pytest-benchmark; the GPU cases skip without CUDA, with the reason):

* ``default``: the repo's default prior (hidden 576, 8 layers, 4 heads) over latents 4x32x32,
  batch 16 (the kinetics_stride4x4x4 VQ-VAE's latent shape, 2048 codes);
* ``ucf``: the original's pretrained UCF-101 prior ``ucf101_uncond_gpt`` over its
  ``ucf101_stride4x4x4`` VQ-VAE (16x128x128 clips, latents 4x32x32), batch 16. Its prior sizes are
  read from the checkpoint's hyper-parameters when the file is in the local cache
  (:func:`ucf_prior_sizes`); otherwise the sizes the original documents for
  ``scripts/train_videogpt.py`` (hidden 576, 4 heads, 8 layers) are used, and the case says so;
* ``tiny_cpu``: a small CPU model, so the file runs everywhere.

Weights are random (timing does not depend on them). The original's cost per position is the same
at every position (it attends over the whole zero-padded cache), so it is timed over the first
``VIDEOGPT_FAST_BENCH_ORIG_STEPS`` positions (default 256) and scaled to the full grid;
``VIDEOGPT_FAST_BENCH_ORIG_STEPS=0`` times all of them. ``extra_info`` holds the speedup, the
per-step time, the roofline per-step time (weights + KV-cache bytes per step / measured copy
bandwidth) and the device/versions.

Run: ``pytest benchmarks/bench_sampling.py --benchmark-only`` (GPU) or
``python benchmarks/bench_sampling.py --quick`` (the CPU case, printed).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Dict, Optional, Tuple

import pytest
import torch

from videogpt_fast import backends
from videogpt_fast import sample as S
from videogpt_fast.gpt import VideoGPT
from videogpt_fast.ops import decode_attention_backend
from videogpt_fast.vqvae import VQVAE

CONFIGS = {
    # name: (prior hyper-parameters, VQ-VAE hyper-parameters, batch)
    "default": (dict(hidden_dim=576, heads=4, layers=8),
                dict(embedding_dim=256, n_codes=2048, n_hiddens=240, n_res_layers=4, downsample=[4, 4, 4],
                     sequence_length=16, resolution=128), 16),
    "ucf": (None,  # ucf_prior_sizes(): from the cached checkpoint, else the documented defaults
            dict(embedding_dim=256, n_codes=2048, n_hiddens=240, n_res_layers=4, downsample=[4, 4, 4],
                 sequence_length=16, resolution=128), 16),
    "tiny_cpu": (dict(hidden_dim=48, heads=4, layers=2),
                 dict(embedding_dim=32, n_codes=64, n_hiddens=32, n_res_layers=1, downsample=[2, 4, 4],
                      sequence_length=4, resolution=32), 2),
}


DOCUMENTED_PRIOR = dict(hidden_dim=576, heads=4, layers=8)  # the original README's train_videogpt.py defaults


def ucf_prior_sizes() -> Tuple[Dict[str, int], str]:
    """``(dict(hidden_dim, heads, layers), source)`` of the original's pretrained UCF-101 prior.

    Read from ``hyper_parameters['args']`` of ``ucf101_uncond_gpt`` when it is in the local cache
    (:func:`videogpt_fast.checkpoint.cache_dirs`; nothing is downloaded); else the sizes the
    original's README documents for ``train_videogpt.py``, with ``source`` saying so."""
    from videogpt_fast import checkpoint as C
    from videogpt_fast.utils import as_namespace
    try:
        path = C.resolve_pretrained("ucf101_uncond_gpt", C.PRETRAINED_VIDEOGPT)
    except FileNotFoundError:
        return dict(DOCUMENTED_PRIOR), ("the original README's train_videogpt.py defaults "
                                        "(ucf101_uncond_gpt is not in the local cache)")
    args = as_namespace(C.safe_load(path)["hyper_parameters"]["args"])
    return {k: int(getattr(args, k)) for k in DOCUMENTED_PRIOR}, f"hyper-parameters of {path}"


def prior_sizes(name: str) -> Tuple[Dict[str, int], str]:
    """The prior hyper-parameters of config ``name`` and where they come from."""
    if name == "ucf":
        return ucf_prior_sizes()
    return CONFIGS[name][0], "benchmark config"


def build_model(name: str, device: torch.device, attn_type: str = "full") -> VideoGPT:
    """A seeded VideoGPT of config ``name`` (random weights) in eval mode on ``device``."""
    _, vq, _ = CONFIGS[name]
    prior = prior_sizes(name)[0]
    torch.manual_seed(0)
    vqvae = VQVAE(argparse.Namespace(**vq))
    args = dict(vqvae="random", n_cond_frames=0, class_cond=False, dropout=0.0, attn_type=attn_type,
                attn_dropout=0.0, **prior)
    model = VideoGPT(args, vqvae=vqvae)
    with torch.no_grad():
        model.fc_out.weight.normal_(std=0.02)
    return model.to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Measured device memory bandwidth (bytes/s) of a large device-to-device copy (read + write)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    _sync(device)
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    _sync(device)
    return 2 * nbytes * reps / (time.perf_counter() - t)


def roofline_step_seconds(model: VideoGPT, n: int, dtype: torch.dtype, bandwidth: float) -> float:
    """Average bytes one decode step must read (weights once, KV cache up to the position: L/2 on
    average, keys and values, every layer), divided by the bandwidth."""
    plan = S.DecodePlan.from_model(model, n, {}, dtype)
    try:
        L = plan.seq_len
        kv = plan.cache_nbytes() * (L + 1) / (2 * L)  # every layer's keys and values up to the position
        return (plan.weight_bytes() + kv) / bandwidth
    finally:
        plan.close()


def run_case(name: str, device: torch.device, dtype: torch.dtype, orig_steps: Optional[int] = None,
             benchmark=None) -> Dict[str, float]:
    """Time ours (via ``benchmark`` when given) and the original; return the numbers."""
    model = build_model(name, device)
    n = CONFIGS[name][2]
    L = math.prod(model.shape)
    if orig_steps is None:
        orig_steps = int(os.environ.get("VIDEOGPT_FAST_BENCH_ORIG_STEPS", "256")) or L
    orig_steps = min(orig_steps, L)

    def ours():
        out = S.sample_codes(model, n, generator=None, progress=False, dtype=dtype)
        _sync(device)
        return out

    ours()  # warm-up: kernels, allocator, cuBLAS handles
    if benchmark is not None:
        codes = benchmark.pedantic(ours, rounds=3 if device.type == "cuda" else 1, iterations=1,
                                   warmup_rounds=0)
        fast_s = benchmark.stats.stats.min
    else:
        t = time.perf_counter()
        codes = ours()
        fast_s = time.perf_counter() - t
    assert codes.shape == (n, *model.shape)

    S.sample_codes_reference(model, n, max_positions=min(8, orig_steps))  # warm-up
    _sync(device)
    t = time.perf_counter()
    S.sample_codes_reference(model, n, max_positions=orig_steps)
    _sync(device)
    orig_s = (time.perf_counter() - t) * L / orig_steps

    info = dict(config=name, sizes_from=prior_sizes(name)[1], batch=n, positions=L, dtype=str(dtype).replace("torch.", ""),
                ours_s=fast_s, original_s=orig_s, original_timed_positions=orig_steps,
                speedup=orig_s / fast_s, ours_step_ms=1e3 * fast_s / L,
                attention_backend=decode_attention_backend(device),
                torch=torch.__version__,
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    if device.type == "cuda":
        bw = copy_bandwidth(device)
        roof = roofline_step_seconds(model, n, dtype, bw)
        info.update(bandwidth_GBps=bw / 1e9, roofline_step_ms=1e3 * roof,
                    roofline_fraction=roof / (fast_s / L))
    if benchmark is not None:
        benchmark.extra_info.update(info)
    return info


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_device():
    if not torch.cuda.is_available():
        pytest.skip("sampling benchmarks need a CUDA device")
    from videogpt_fast import csrc_build

    if backends.cuda_extension() is None and csrc_build.why_unbuildable() is None:
        csrc_build.load()  # build outside the timed region; without it 'auto' runs the torch path
    return torch.device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("name", ["default", "ucf"])
def test_sampling_gpu(benchmark, cuda_device, name, dtype):
    benchmark.group = f"sampling-{name}"
    info = run_case(name, cuda_device, dtype, benchmark=benchmark)
    print(f"\n{info}")


def test_sampling_tiny_cpu(benchmark):
    benchmark.group = "sampling-tiny-cpu"
    info = run_case("tiny_cpu", torch.device("cpu"), torch.float32, orig_steps=32, benchmark=benchmark)
    assert info["ours_s"] > 0 and info["original_s"] > 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the tiny CPU case")
    parser.add_argument("--config", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--orig-steps", type=int, default=None)
    a = parser.parse_args(argv)
    if a.quick:
        print(run_case("tiny_cpu", torch.device("cpu"), torch.float32, orig_steps=32))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: use --quick", file=sys.stderr)
        return 1
    from videogpt_fast import csrc_build

    if backends.cuda_extension() is None and csrc_build.why_unbuildable() is None:
        csrc_build.load()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    for name in [a.config] if a.config else ["default", "ucf"]:
        print(run_case(name, torch.device("cuda"), dtype, orig_steps=a.orig_steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
