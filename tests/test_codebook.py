"""EMA codebook: the original's numbers, init behaviour, EMA statistics and distributed updates."""
from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import assert_close, load_fixture
from videogpt_fast import ops
from videogpt_fast.kernels.reference import codebook_stats_reference
from videogpt_fast.vqvae import Codebook


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def _min_dist_to_rows(rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Exact per-row max-abs distance to the closest input row (no cdist rounding)."""
    return (rows[:, None, :] - inputs[None, :, :]).abs().amax(-1).min(-1).values


def _reference_step(before: dict, z: torch.Tensor):
    """The original's training step (no init), with the dense one-hot, minus the random restart.
    Returns (N, z_avg, embeddings before restart, encodings, commitment_loss, perplexity)."""
    emb = before["embeddings"]
    K = emb.shape[0]
    flat = _flat(z)
    distances = (flat ** 2).sum(1, keepdim=True) - 2 * flat @ emb.t() + (emb.t() ** 2).sum(0, keepdim=True)
    idx = distances.argmin(1)
    onehot = F.one_hot(idx, K).type_as(flat)
    n_total = onehot.sum(0)
    encode_sum = flat.t() @ onehot
    N = before["N"] * 0.99 + 0.01 * n_total
    z_avg = before["z_avg"] * 0.99 + 0.01 * encode_sum.t()
    n = N.sum()
    weights = (N + 1e-7) / (n + K * 1e-7) * n
    normalized = z_avg / weights.unsqueeze(1)
    codes = idx.view(z.shape[0], *z.shape[2:])
    quant = F.embedding(codes, emb).movedim(-1, 1)
    commitment = 0.25 * F.mse_loss(z, quant)
    avg_probs = onehot.mean(0)
    perplexity = torch.exp(-torch.sum(avg_probs * torch.log(avg_probs + 1e-10)))
    return N, z_avg, normalized, codes, commitment, perplexity


def _trained_state(K: int, D: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(embeddings=torch.randn(K, D, generator=g),
                N=torch.rand(K, generator=g) * 3,
                z_avg=torch.randn(K, D, generator=g))


# ----------------------------------------------------------------------------------------------
def test_fixture_one_training_step():
    fx = load_fixture("codebook_ema.pt")
    before, after, z = fx["before"], fx["after"], fx["z"]
    K, D = before["embeddings"].shape
    cb = Codebook(K, D)
    cb.load_state_dict(before, strict=True)
    assert not cb._need_init
    cb.train()
    out = cb(z)
    assert torch.equal(out["encodings"], fx["encodings"])
    assert_close(out["commitment_loss"], fx["commitment_loss"])
    assert_close(out["perplexity"], fx["perplexity"])
    assert_close(cb.N, after["N"])
    assert_close(cb.z_avg, after["z_avg"])
    usage = fx["usage"]
    assert torch.equal(cb.N >= 1, usage)
    assert (~usage).any(), "fixture should contain dead codes"
    assert_close(cb.embeddings[usage], after["embeddings"][usage])
    # dead codes restarted from (tiled, noised) inputs: within 6 sigma of the tiling noise
    flat = _flat(z)
    bound = 6 * 0.01 / math.sqrt(D) + 1e-6
    assert bool((_min_dist_to_rows(cb.embeddings[~usage], flat) <= bound).all())
    assert bool((_min_dist_to_rows(after["embeddings"][~usage], flat) <= bound).all())
    # output embeddings: the straight-through value is the code vector
    assert_close(out["embeddings"], F.embedding(fx["encodings"], before["embeddings"]).movedim(-1, 1))


@pytest.mark.parametrize("K,D,shape,seed", [(16, 8, (2, 3, 4, 4), 0), (37, 5, (3, 2, 3, 5), 1),
                                            (64, 4, (1, 1, 2, 3), 2)])
def test_training_step_matches_one_hot_reference(K, D, shape, seed):
    torch.manual_seed(seed)
    before = _trained_state(K, D, seed)
    z = torch.randn(shape[0], D, *shape[1:]) * 1.5
    N, z_avg, normalized, codes, commitment, perplexity = _reference_step(before, z)

    cb = Codebook(K, D)
    cb.load_state_dict(before)
    cb.train()
    out = cb(z)
    assert torch.equal(out["encodings"], codes)
    assert_close(out["commitment_loss"], commitment)
    assert_close(out["perplexity"], perplexity)
    assert_close(cb.N, N)
    assert_close(cb.z_avg, z_avg)
    used = N >= 1
    assert_close(cb.embeddings[used], normalized[used])
    flat = _flat(z)
    bound = 6 * 0.01 / math.sqrt(D) + 1e-6
    assert bool((_min_dist_to_rows(cb.embeddings[~used], flat) <= bound).all())


@pytest.mark.parametrize("rows,K,D", [(500, 37, 6), (7, 64, 3), (1, 5, 2), (300, 300, 16)])
def test_code_stats_equal_one_hot_formulas(rows, K, D):
    torch.manual_seed(rows)
    flat = torch.randn(rows, D)
    idx = torch.randint(0, K, (rows,))
    counts, sums = codebook_stats_reference(flat, idx, K)
    onehot = F.one_hot(idx, K).type_as(flat)
    assert torch.equal(counts, onehot.sum(0))
    assert_close(sums, (flat.t() @ onehot).t())
    avg_probs = onehot.mean(0)
    expected = torch.exp(-torch.sum(avg_probs * torch.log(avg_probs + 1e-10)))
    assert_close(Codebook.perplexity_from_counts(counts), expected)
    codes, counts2, sums2 = ops.codebook_nearest_with_stats(flat, torch.randn(K, D))
    assert torch.equal(counts2, torch.bincount(codes, minlength=K).float())
    assert_close(sums2, (flat.t() @ F.one_hot(codes, K).type_as(flat)).t())


def test_eval_mode_leaves_buffers_and_init_flag():
    cb = Codebook(10, 4).eval()
    state = {k: v.clone() for k, v in cb.state_dict().items()}
    z = torch.randn(2, 4, 2, 3, 3)
    out = cb(z)
    assert cb._need_init
    for k, v in cb.state_dict().items():
        assert torch.equal(v, state[k]), k
    flat = _flat(z)
    d = (flat[:, None] - cb.embeddings[None]).pow(2).sum(-1)
    assert torch.equal(out["encodings"].flatten(), d.argmin(1))


def test_fresh_codebook_initialises_on_first_training_batch():
    K, D = 12, 3
    cb = Codebook(K, D).train()
    z = torch.randn(2, D, 2, 2, 2)  # 16 rows >= K: no tiling, no noise
    flat = _flat(z)
    out = cb(z)
    assert not cb._need_init
    counts = torch.bincount(out["encodings"].flatten(), minlength=K).float()
    # init set N to ones, then one EMA step
    assert_close(cb.N, 0.99 + 0.01 * counts)
    init_rows = (cb.z_avg - 0.01 * torch.zeros(K, D).index_add_(0, out["encodings"].flatten(), flat)) / 0.99
    # every initial code is one of the inputs, no two codes the same input
    assert bool((_min_dist_to_rows(init_rows, flat) <= 1e-5).all())
    nearest = (init_rows[:, None] - flat[None]).abs().amax(-1).argmin(1)
    assert len(set(nearest.tolist())) == K
    # the codes were assigned against the initialised codebook
    e = init_rows
    d = (flat[:, None] - e[None]).pow(2).sum(-1)
    assert torch.equal(out["encodings"].flatten(), d.argmin(1))


def _tile(x: torch.Tensor, n_codes: int) -> torch.Tensor:
    """The original's ``Codebook._tile``: repeat rows up to ``n_codes`` and add N(0, (0.01/sqrt(D))^2)
    noise (only when there are fewer rows than codes)."""
    d, ew = x.shape
    if d < n_codes:
        x = x.repeat((n_codes + d - 1) // d, 1)
        x = x + torch.randn_like(x) * (0.01 / math.sqrt(ew))
    return x


def test_init_tiles_and_noises_small_batches():
    K, D = 16, 8
    cb = Codebook(K, D).train()
    z = torch.randn(1, D, 1, 2, 2)  # 4 rows < 16 codes: 4 noised copies of each
    flat = _flat(z)
    cb._init_embeddings(z)
    std = 0.01 / math.sqrt(D)
    dist_ = (cb.embeddings[:, None] - flat[None]).abs().amax(-1)
    assert bool((dist_.min(1).values <= 6 * std).all())
    assert bool((dist_.min(1).values > 0).all()), "tiled rows must be noised"
    assert torch.bincount(dist_.argmin(1), minlength=4).tolist() == [4, 4, 4, 4]
    assert torch.equal(cb.embeddings, cb.z_avg) and torch.equal(cb.N, torch.ones(K))
    tiled = _tile(flat, K)
    assert tiled.shape == (16, D)
    assert bool(((tiled - flat.repeat(4, 1)).abs() <= 6 * std).all())
    assert _tile(torch.randn(20, D), K).shape == (20, D)


def test_loaded_codebook_is_not_reinitialised():
    K, D = 8, 4
    src = Codebook(K, D)
    src.load_state_dict(_trained_state(K, D, 3))
    dst = Codebook(K, D)
    assert dst._need_init
    dst.load_state_dict(src.state_dict())
    assert not dst._need_init
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    z = torch.randn(2, D, 2, 2, 2)
    dst.train()
    dst(z)
    N, z_avg, *_ = _reference_step(before, z)
    assert_close(dst.N, N)
    assert_close(dst.z_avg, z_avg)


def test_loading_an_uninitialised_state_still_initialises():
    fresh = Codebook(6, 3)
    dst = Codebook(6, 3)
    dst.load_state_dict(fresh.state_dict())  # N all zero: never saw a training batch
    assert dst._need_init
    dst.train()(torch.randn(1, 3, 2, 2, 2))
    assert not dst._need_init
    assert bool((dst.N >= 0.99).all())


def test_straight_through_and_commitment_gradients():
    cb = Codebook(9, 4).eval()
    z = torch.randn(2, 4, 2, 3, 3, requires_grad=True)
    out = cb(z)
    g = torch.randn_like(z)
    (grad,) = torch.autograd.grad((out["embeddings"] * g).sum(), z)
    assert torch.equal(grad, g)
    (grad,) = torch.autograd.grad(cb(z)["commitment_loss"], z)
    e = cb.dictionary_lookup(out["encodings"]).movedim(-1, 1)
    assert_close(grad, 0.25 * 2 * (z.detach() - e) / z.numel())


def test_reduced_precision_input_runs_in_codebook_dtype():
    cb = Codebook(11, 6).eval()
    z = torch.randn(1, 6, 2, 2, 3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cb(z)
    ref = cb(z.float())
    assert torch.equal(out["encodings"], ref["encodings"])
    assert out["embeddings"].dtype == torch.float32
    assert out["commitment_loss"].dtype == torch.float32


def test_dictionary_lookup():
    cb = Codebook(5, 3)
    codes = torch.tensor([[0, 4], [2, 2]])
    assert torch.equal(cb.dictionary_lookup(codes), cb.embeddings[codes])


def test_errors():
    with pytest.raises(ValueError, match=r"\(B, 4, T, H, W\)"):
        Codebook(5, 4)(torch.randn(2, 3, 1, 1, 1))
    with pytest.raises(ValueError, match=r"\(B, 4, T, H, W\)"):
        Codebook(5, 4)(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="n_codes >= 1"):
        Codebook(0, 4)


# ----------------------------------------------------------------------------------------------
# two CPU processes (gloo): statistics are all-reduced, restarts and init broadcast from rank 0
def _dist_worker(rank: int, world: int, init_file: str, zs, before, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different RNG per rank: broadcasts must make them agree
        cb = Codebook(*before["embeddings"].shape)
        cb.load_state_dict(before)
        cb.train()
        cb(zs[rank])
        fresh = Codebook(*before["embeddings"].shape).train()
        fresh(zs[rank])
        results[rank] = dict(N=cb.N.clone(), z_avg=cb.z_avg.clone(), embeddings=cb.embeddings.clone(),
                             fresh=fresh.embeddings.clone(), fresh_z_avg=fresh.z_avg.clone())
    finally:
        dist.destroy_process_group()


def test_distributed_update_two_ranks():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    K, D = 10, 3
    before = _trained_state(K, D, 5)
    before["N"][:3] = 0.1  # some dead codes to restart
    zs = [torch.randn(1, D, 2, 2, 2), torch.randn(2, D, 1, 2, 2) + 0.5]
    z_all = torch.cat([_flat(z) for z in zs]).t().reshape(1, D, -1, 1, 1)
    N, z_avg, normalized, *_ = _reference_step(before, z_all)
    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.get_context("spawn").Manager()
        results = manager.dict()
        mp.start_processes(_dist_worker, args=(2, os.path.join(tmp, "init"), zs, before, results),
                           nprocs=2, join=True, start_method="spawn")
        r0, r1 = dict(results[0]), dict(results[1])
        manager.shutdown()
    for r in (r0, r1):
        assert_close(r["N"], N)
        assert_close(r["z_avg"], z_avg)
        used = N >= 1
        assert_close(r["embeddings"][used], normalized[used])
    for key in ("embeddings", "fresh", "fresh_z_avg"):
        assert torch.equal(r0[key], r1[key]), key
