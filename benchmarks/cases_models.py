"""End-to-end cases: VQ-VAE and prior training steps, sampling.

Training steps compare the plain-PyTorch configuration (``torch`` backend, fp32: the reference)
against ``auto`` (the fastest backend, bf16 autocast on GPU) at the repo's default sizes on GPU and
tiny sizes on CPU. Sampling compares the original per-position algorithm (``sample_codes_reference``)
with the static-KV-cache sampler. When the original ``videogpt`` package is installed, its modules
run too (impl ``original``, same weights and inputs; see ``original.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import math
from typing import Iterator

import torch

from videogpt_fast import sample as S
from videogpt_fast.backends import use_backend
from videogpt_fast.gpt import VideoGPT
from videogpt_fast.vqvae import VQVAE

from . import original as O
from .harness import Case, Settings, register, rel_error_check, rel_tolerance, synchronize


def _vq_args(gpu: bool) -> argparse.Namespace:
    if gpu:  # the repo's defaults: 16x128x128 clips, n_hiddens 240, 4 res layers, downsample 4x4x4
        return argparse.Namespace(embedding_dim=256, n_codes=2048, n_hiddens=240, n_res_layers=4,
                                  downsample=[4, 4, 4], sequence_length=16, resolution=128)
    return argparse.Namespace(embedding_dim=16, n_codes=64, n_hiddens=32, n_res_layers=1,
                              downsample=[2, 4, 4], sequence_length=8, resolution=32)


def _step(model, loss_fn, opt, backend: str, amp: bool, device: torch.device):
    """One optimiser step under ``backend``; returns the loss."""
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with use_backend(backend), ctx:
        loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    synchronize(device)
    return loss.detach().float()


LOSS_TOLERANCE = "loss+-10%: loss within 10% + 1e-3 of the fp32 torch-backend reference's (same weights, inputs, dropout masks)"


def _loss_check(ref, out):
    if not torch.isfinite(out) or abs(float(out) - float(ref)) > 0.1 * abs(float(ref)) + 1e-3:
        raise AssertionError(f"loss {float(out):.4f} differs from the reference's {float(ref):.4f}")
    return f"loss {float(out):.4f} vs {float(ref):.4f}"


def _train_case(name, params, model, loss_fn, dev, batch) -> Case:
    """reference = backend torch in fp32; auto = fastest backend (fp32, and bf16 autocast on GPU);
    original = the original package's module with the same weights, when installed.
    ``loss_fn(module)`` computes the loss of ``model`` or of its original twin."""
    opt = _optimizer(model)
    step = lambda backend, amp: _step(model, lambda: loss_fn(model), opt, backend, amp, dev)  # noqa: E731
    case = Case(name, "models", params, "float32",
                impls={"reference": lambda: step("torch", False), "auto": lambda: step("auto", False)},
                items=float(batch), item_unit="clips", check=_loss_check, tolerance=LOSS_TOLERANCE)
    if dev.type == "cuda":
        case.impls["auto_bf16"] = lambda: step("auto", True)

    def original(pkg):
        twin = (O.vqvae if isinstance(model, VQVAE) else O.videogpt)(pkg, model)
        opt_twin = _optimizer(twin)
        return lambda: _step(twin, lambda: loss_fn(twin), opt_twin, "torch", False, dev)
    O.add_original(case, original)
    return case


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam at a tiny lr: the models stay comparable across implementations and steps."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-9)


def _vqvae_and_clips(s: Settings, gpu_batch: int, train: bool):
    """A seeded VQ-VAE (default sizes on GPU, tiny on CPU) and a batch of random clips; also the
    case params."""
    dev, gpu = s.device, s.device.type == "cuda" and not s.quick
    args = _vq_args(gpu)
    b = gpu_batch if gpu else 2
    torch.manual_seed(0)
    model = VQVAE(args).to(dev).train(train)
    x = torch.rand(b, 3, args.sequence_length, args.resolution, args.resolution, device=dev) - 0.5
    params = dict(B=b, clip=(args.sequence_length, args.resolution, args.resolution), n_hiddens=args.n_hiddens)
    return model, x, params


def vqvae_train_case(s: Settings) -> Case:
    model, x, params = _vqvae_and_clips(s, 4, train=True)
    with torch.no_grad():
        model.codebook(model.pre_vq_conv(model.encoder(x)))  # data-dependent init outside the timing

    def loss_fn(m):
        recon, _, vq = m(x)
        return recon + vq["commitment_loss"]

    return _train_case("vqvae_train_step", params, model, loss_fn, s.device, params["B"])


def vqvae_codec_case(s: Settings) -> Case:
    """VQ-VAE encode + decode (inference) of a batch of clips."""
    model, x, params = _vqvae_and_clips(s, 16, train=False)
    dev, b = s.device, params["B"]

    @torch.no_grad()
    def run(backend: str, amp: bool, m: torch.nn.Module = model):
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with use_backend(backend), ctx:
            codes = m.encode(x)
            out = m.decode(codes)
        synchronize(dev)
        return codes, out.float()

    def check(ref, out):
        agree = float((ref[0] == out[0]).float().mean())
        if agree < 0.99:
            raise AssertionError(f"only {agree:.2%} of the codes agree with the reference")
        err = float((out[1].double() - ref[1].double()).norm() / ref[1].double().norm())
        return f"{agree:.2%} of the codes agree; decoded clips: relative error {err:.1e}"

    case = Case("vqvae_encode_decode", "models", params, "float32",
                impls={"reference": lambda: run("torch", False), "auto": lambda: run("auto", False)},
                items=float(b), item_unit="clips", check=check,
                tolerance="codes>=99%: at least 99% of the codes equal the fp32 torch-backend reference's")
    if dev.type == "cuda":
        case.impls["auto_bf16"] = lambda: run("auto", True)
        case.skipped["auto_bf16:check"] = "bf16 changes near-tie codes: timed only"

    O.add_original(case, lambda pkg: O.bind(run, "torch", False, O.vqvae(pkg, model)))
    return case


def gpt_train_case(s: Settings) -> Case:
    dev, gpu = s.device, s.device.type == "cuda" and not s.quick
    vq = VQVAE(_vq_args(gpu))
    prior = dict(hidden_dim=576, heads=4, layers=8) if gpu else dict(hidden_dim=48, heads=4, layers=2)
    args = dict(vqvae="random", n_cond_frames=0, class_cond=False, dropout=0.2, attn_type="full",
                attn_dropout=0.3, **prior)
    torch.manual_seed(0)
    model = VideoGPT(args, vqvae=vq).to(dev).train()
    b = 8 if gpu else 2
    codes = torch.randint(0, vq.n_codes, (b, *vq.latent_shape), device=dev)
    emb = model.vqvae.codebook.dictionary_lookup(codes)

    def loss_fn(m):
        torch.manual_seed(1)  # same dropout masks for every implementation
        return m(emb, codes, {})[0]

    return _train_case("gpt_train_step", dict(B=b, latent=tuple(vq.latent_shape), **prior), model, loss_fn, dev, b)


SAMPLING_CHECK_POSITIONS = 64  # positions the reference algorithm runs on GPU (32 on CPU), scaled to the grid


def _decode_logits(model, codes: torch.Tensor, positions: int, dtype: torch.dtype) -> torch.Tensor:
    """(n, positions, n_codes) float32 logits of :func:`videogpt_fast.sample.decode_step` (our
    sampler's step, in ``dtype``) fed ``codes`` (n, *latent) one position at a time, eagerly."""
    n = codes.shape[0]
    plan = S.DecodePlan.from_model(model, n, {}, dtype)
    flat = codes.reshape(n, -1)
    out = []
    with torch.no_grad():
        for i in range(positions):
            plan.pos.fill_(i)
            if i > 0:
                plan.prev.copy_(flat[:, i - 1])
            out.append(S.decode_step(plan, plan.prev, plan.pos).float())
    return torch.stack(out, 1)


def sampling_checks(model, positions: int, dtype: torch.dtype):
    """(check, tolerance) of ``sample_codes`` against the original algorithm.

    fp32: the first ``positions`` codes equal the reference algorithm's exactly (same generator,
    same random-number consumption). Other dtypes (the draws diverge at the first near-tie): the
    logits our step computes in ``dtype`` over the first ``positions`` positions of our own samples,
    against the model's fp32 teacher-forced forward (the original's training-time computation) on
    the same codes, by relative error."""
    if dtype == torch.float32:
        def exact(ref, out):
            a, b = ref.reshape(ref.shape[0], -1)[:, :positions], out.reshape(out.shape[0], -1)[:, :positions]
            if not torch.equal(a, b):
                raise AssertionError(f"{int((a != b).sum())} of {a.numel()} sampled codes differ")
            return f"the first {positions} positions x batch {a.shape[0]}: all codes equal"
        return exact, f"exact: the first {positions} sampled codes equal the reference algorithm's (same generator)"
    tol = rel_tolerance(dtype)[0]

    def logits(ref, out):
        with torch.no_grad(), use_backend("torch"):  # the plain-PyTorch forward, fp32
            emb = model.vqvae.codebook.dictionary_lookup(out)
            truth = model(emb, out, {})[1].reshape(out.shape[0], -1, model.vqvae.n_codes)[:, :positions]
        return rel_error_check(tol, ("logits",))(truth.float(), _decode_logits(model, out, positions, dtype))
    return logits, (f"rel<={tol:.0e}: logits of our {str(dtype).split('.')[-1]} step over the first {positions} positions of our "
                    f"samples vs the fp32 teacher-forced forward: relative error <= {tol:.0e}")


def sampling_case(s: Settings) -> Case:
    """``sample_codes`` (static KV cache, CUDA graph on GPU) against the original algorithm
    (``sample_codes_reference``: the per-position loop through ``forward(decode_step=i)``). On GPU:
    the original's pretrained UCF-101 prior sizes (see ``bench_sampling.ucf_prior_sizes``), batch
    16, bf16; a tiny prior in fp32 on CPU. The reference runs the first 64 (CPU: 32) positions and
    its time is scaled to the whole grid (its cost per position does not depend on the position)."""
    from .bench_sampling import CONFIGS, build_model, prior_sizes
    dev = s.device
    gpu = dev.type == "cuda" and not s.quick
    name = "ucf" if gpu else "tiny_cpu"
    model = build_model(name, dev)
    n = CONFIGS[name][2]
    L = math.prod(model.shape)
    P = min(SAMPLING_CHECK_POSITIONS if gpu else 32, L)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    gen = torch.Generator(device=dev)

    def ours():
        gen.manual_seed(0)
        out = S.sample_codes(model, n, generator=gen, progress=False, dtype=dtype)
        synchronize(dev)
        return out

    def reference():  # the original's per-position algorithm, in this package
        gen.manual_seed(0)
        out = S.sample_codes_reference(model, n, generator=gen, max_positions=P)
        synchronize(dev)
        return out

    check, tolerance = sampling_checks(model, P, dtype)
    case = Case("sample_codes", "sampling", dict(B=n, latent=tuple(model.shape), hidden=model.args.hidden_dim,
                                                 heads=model.args.heads, layers=model.args.layers, positions=L,
                                                 sizes_from=prior_sizes(name)[1]), str(dtype).split(".")[-1],
                impls={"reference": reference, "ours": ours}, items=float(n), item_unit="samples", check=check,
                tolerance=tolerance)
    if P < L:
        case.time_scale["reference"] = (L / P, f"timed over the first {P} of {L} positions, scaled by {L / P:g}")

    def original_package(pkg):
        orig = O.videogpt(pkg, model).eval()

        def run_original():  # its sample() draws from the global RNG and decodes to pixels too
            torch.manual_seed(0)
            out = orig.sample(n)
            synchronize(dev)
            return out
        return run_original
    if gpu:
        case.skipped["original"] = ("the original's sample() cannot stop early (a call takes ~5x ours over the whole grid): "
                                    "its algorithm is timed as 'reference'")
    else:
        O.add_original(case, original_package)
        case.skipped["original:check"] = "the original samples from the global RNG and returns decoded videos: timed only"
    return case


register("vqvae_encode_decode")(lambda s: iter([vqvae_codec_case(s)]))
register("vqvae_train_step")(lambda s: iter([vqvae_train_case(s)]))
register("gpt_train_step")(lambda s: iter([gpt_train_case(s)]))
register("sample_codes")(lambda s: iter([sampling_case(s)]))
