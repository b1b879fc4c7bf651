"""Fast sampling (videogpt_fast.sample): static KV cache decode against the original's decoding,
greedy self-consistency, reproducibility, top-k/top-p, conditioning."""
import argparse
import logging

import pytest
import torch

from conftest import assert_close, cpp_compiler_or_skip as _cpp_compiler_or_skip, gpt_fixture_model as fixture_model
from videogpt_fast import sample as S
from videogpt_fast.gpt import VideoGPT
from videogpt_fast.vqvae import VQVAE


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Decoding runs (2, 48) x (48, 144) matmuls: on a loaded 2-core machine OpenMP's thread
    hand-offs cost more than the work (25x here), so these tests run single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_model(attn_type: str, class_cond: bool = False, seed: int = 0) -> VideoGPT:
    """A small random prior with a latent shape, width and head count unlike the fixtures'."""
    torch.manual_seed(seed)
    vq_args = argparse.Namespace(embedding_dim=16, n_codes=32, n_hiddens=16, n_res_layers=1,
                                 downsample=[2, 4, 4], sequence_length=4, resolution=32)
    vqvae = VQVAE(vq_args)
    args = dict(vqvae="unused", n_cond_frames=0, class_cond=class_cond, hidden_dim=60, heads=2, layers=2,
                dropout=0.0, attn_type=attn_type, attn_dropout=0.0)
    if class_cond:
        args["class_cond_dim"] = 3
    model = VideoGPT(args, vqvae=vqvae)
    with torch.no_grad():
        model.fc_out.weight.normal_(std=0.3)  # zero at init: give the logits something to say
    return model.eval()


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt_full", "gpt_sparse", "gpt_cond"])
def test_teacher_forced_decode_matches_original_decoding(name):
    model, ref, batch = fixture_model(name)
    logits = S.teacher_forced_decode(model, ref["targets"], batch)
    assert logits.shape == ref["decode_logits"].shape
    assert_close(logits, ref["decode_logits"])


def test_cond_fixture_frames():
    model, ref, batch = fixture_model("gpt_cond")
    with torch.no_grad():
        emb = model.vqvae.codebook.dictionary_lookup(ref["targets"])
        _, logits = model(emb, ref["targets"], model.make_cond(batch))
    assert_close(logits, ref["logits"])


@pytest.mark.parametrize("attn_type", ["full", "sparse"])
def test_decode_matches_forward_on_other_shapes(attn_type):
    """Latents (2, 8, 8), hidden 60, 2 heads, class-conditional: the decode logits at every position equal
    the teacher-forced forward's (the sparse forward runs the block-sparse op)."""
    model = random_model(attn_type, class_cond=True)
    codes = torch.randint(0, 32, (3, *model.shape))
    label = torch.tensor([0, 2, 1])
    batch = {"video": torch.zeros(3, 3, 4, 32, 32), "label": label}
    logits = S.teacher_forced_decode(model, codes, batch)
    with torch.no_grad():
        emb = model.vqvae.codebook.dictionary_lookup(codes)
        _, ref = model(emb, codes, model.make_cond(batch))
    assert_close(logits, ref.reshape(3, -1, ref.shape[-1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt_full", "gpt_sparse"])
def test_greedy_sample_is_self_consistent(name):
    """top_k=1: the argmax of the model's own teacher-forced forward (not the decoder that sampled;
    for gpt_sparse the forward runs ops.blocksparse_attention) on the sample is the sample."""
    model, _, _ = fixture_model(name)
    codes = S.sample_codes(model, 2, top_k=1, progress=False)
    assert codes.shape == (2, *model.shape) and codes.dtype == torch.long
    with torch.no_grad():
        emb = model.vqvae.codebook.dictionary_lookup(codes)
        _, logits = model(emb, codes, {})
    assert logits.shape == (*codes.shape, model.vqvae.n_codes)
    assert torch.equal(logits.argmax(-1), codes)
    assert codes.unique().numel() > 1  # not a degenerate constant sample


def test_default_sampling_reproduces_the_original_loop():
    """Same generator seed: the original per-position loop and ours draw the same codes."""
    model, _, _ = fixture_model("gpt_full")
    ours = S.sample_codes(model, 2, generator=torch.Generator().manual_seed(7), progress=False)
    theirs = S.sample_codes_reference(model, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, theirs)


def test_seeded_reproducibility():
    model, _, _ = fixture_model("gpt_sparse")
    a = S.sample_codes(model, 2, generator=torch.Generator().manual_seed(1), progress=False)
    b = S.sample_codes(model, 2, generator=torch.Generator().manual_seed(1), progress=False)
    c = S.sample_codes(model, 2, generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(5)  # no generator: the global RNG, as the original
    d = S.sample_codes(model, 2, progress=False)
    torch.manual_seed(5)
    e = S.sample_codes(model, 2, progress=False)
    assert torch.equal(d, e)


def test_tiny_top_p_and_top_k_one_are_greedy():
    model = random_model("full")
    greedy = S.sample_codes(model, 2, top_k=1, progress=False)
    nucleus = S.sample_codes(model, 2, top_p=1e-6, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(greedy, nucleus)
    cold = S.sample_codes(model, 2, temperature=1e-4, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(greedy, cold)


@pytest.mark.parametrize("name", ["gpt_cond", "gpt_cond_sparse"])
def test_class_and_frame_conditional_sampling_uses_the_batch(name):
    model, ref, batch = fixture_model(name)
    assert model.args.attn_type == ("sparse" if name.endswith("sparse") else "full")
    a = S.sample_codes(model, 2, batch, top_k=1, progress=False)
    assert a.shape == (2, *model.shape)
    # greedy self-consistency under conditioning
    with torch.no_grad():
        emb = model.vqvae.codebook.dictionary_lookup(a)
        _, logits = model(emb, a, model.make_cond(batch))
    assert torch.equal(logits.argmax(-1), a)
    swapped = dict(batch, label=batch["label"].flip(0))
    b = S.sample_codes(model, 2, swapped, top_k=1, progress=False)
    assert not torch.equal(a, b)
    other_frames = dict(batch, video=batch["video"].flip(0))
    c = S.sample_codes(model, 2, other_frames, top_k=1, progress=False)
    assert not torch.equal(a, c)
    with pytest.raises(ValueError, match="needs a batch"):
        S.sample_codes(model, 2, None, progress=False)
    with pytest.raises(ValueError, match="holds 2 videos but n=3"):
        S.sample_codes(model, 3, batch, progress=False)


def test_sparse_conditional_decode_matches_forward():
    """Frame- and class-conditional with sparse attention: the decoder's logits (cross-attention to
    the cached frame features, layout rows of the block-sparse layout) equal the model's forward."""
    model, ref, batch = fixture_model("gpt_cond_sparse")
    logits = S.teacher_forced_decode(model, ref["targets"], batch)
    with torch.no_grad():
        emb = model.vqvae.codebook.dictionary_lookup(ref["targets"])
        _, want = model(emb, ref["targets"], model.make_cond(batch))
    assert_close(logits, want.reshape(logits.shape), rtol=1e-4, atol=1e-5)
    # sparse attention sees fewer keys than gpt_cond's full attention: the logits must differ
    assert not torch.allclose(logits, ref["decode_logits"], rtol=1e-3, atol=1e-3)


def test_progress_bar_renders(capfd):
    """progress=True draws tqdm's bar over the positions (on stderr); progress=False draws none."""
    model = random_model("sparse")
    L = model.shape[0] * model.shape[1] * model.shape[2]
    S.sample_codes(model, 1, top_k=1, progress=False)
    assert f"{L}/{L}" not in capfd.readouterr().err
    S.sample_codes(model, 1, top_k=1, progress=True)
    err = capfd.readouterr().err
    assert "sampling" in err and f"{L}/{L}" in err, err[-500:]


def test_cache_is_static_and_logged(caplog):
    model, _, _ = fixture_model("gpt_full")
    seen = []
    with caplog.at_level(logging.INFO, logger="videogpt_fast.sample"):
        S.sample_codes(model, 2, top_k=1, progress=False, plan_hook=lambda plan: seen.append(plan.cache_data_ptrs()))
    assert len(seen) == 256 and len(seen[0]) == 2 * model.args.layers and all(p == seen[0] for p in seen)
    assert any("step eager" in r.getMessage() for r in caplog.records)
    assert all(net.attn.kv_cache is None for net in model.attn_stack.attn_nets)  # freed afterwards
    with pytest.raises(ValueError, match="cuda_graph=True needs the model on a CUDA device"):
        S.sample_codes(model, 1, cuda_graph=True, progress=False)


def test_sample_returns_videos_in_unit_range():
    model, _, _ = fixture_model("gpt_full")
    videos = S.sample(model, 1, generator=torch.Generator().manual_seed(0), progress=False)
    assert videos.shape == (1, 3, 8, 32, 32)
    assert videos.min() >= 0 and videos.max() <= 1


# ------------------------------------------------------------------------------------------------
# one transformer: the sampler against the original algorithm
# ------------------------------------------------------------------------------------------------
def frame_cond_model(attn_type: str = "sparse", seed: int = 0) -> VideoGPT:
    """A tiny frame- and class-conditional prior: latents (4, 4, 4) (64 positions, two sparse
    blocks), frames 16x16, one conditioning frame."""
    torch.manual_seed(seed)
    vqvae = VQVAE(argparse.Namespace(embedding_dim=8, n_codes=16, n_hiddens=16, n_res_layers=1,
                                     downsample=[1, 4, 4], sequence_length=4, resolution=16))
    model = VideoGPT(dict(vqvae="unused", n_cond_frames=1, class_cond=True, class_cond_dim=3, hidden_dim=24,
                          heads=2, layers=2, dropout=0.0, attn_type=attn_type, attn_dropout=0.0, resolution=16),
                     vqvae=vqvae)
    with torch.no_grad():
        model.fc_out.weight.normal_(std=0.5)
    return model.eval()


def _frame_batch(n: int = 2, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(n, 3, 4, 16, 16, generator=gen) - 0.5, "label": torch.arange(n) % 3}


@pytest.mark.parametrize("name", ["gpt_full", "gpt_sparse", "gpt_cond", "gpt_cond_sparse", "class_only"])
def test_greedy_codes_equal_reference_algorithm(name):
    """fp32 greedy decoding: the sampler's codes are the original algorithm's (the per-position loop
    through ``VideoGPT.forward(decode_step=i)``, argmax instead of the draw), for full, sparse,
    class- and frame-conditional priors."""
    if name == "class_only":
        model, batch = random_model("full", class_cond=True), {"video": torch.zeros(3, 3, 4, 32, 32),
                                                               "label": torch.tensor([2, 0, 1])}
    else:
        model, _, batch = fixture_model(name)
    n = 3 if name == "class_only" else 2
    ours = S.sample_codes(model, n, batch, top_k=1, progress=False)
    ref = S.sample_codes_reference(model, n, batch, greedy=True)
    assert torch.equal(ours, ref)
    assert ours.unique().numel() > 1


@pytest.mark.slow
def test_compiled_step_on_cpu(caplog):
    """The step compiled by inductor (frame- and class-conditional, sparse): the greedy codes of the
    eager step and of the reference algorithm; seeded draws reproducible; the mode is logged."""
    _cpp_compiler_or_skip()
    model, batch = frame_cond_model(), _frame_batch()
    with caplog.at_level(logging.INFO, logger="videogpt_fast.sample"):
        compiled = S.sample_codes(model, 2, batch, top_k=1, progress=False, compile=True)
    assert any("step compiled (inductor)" in r.getMessage() for r in caplog.records)
    eager = S.sample_codes(model, 2, batch, top_k=1, progress=False, compile=False)
    assert torch.equal(compiled, eager)
    assert torch.equal(compiled, S.sample_codes_reference(model, 2, batch, greedy=True))
    assert compiled.unique().numel() > 1
    # sliding windows: eager teacher-forced prefixes between compiled steps, the same graph
    long = S.sample_codes(model, 2, batch, top_k=1, progress=False, compile=True, latent_frames=7)
    assert torch.equal(long, S.sample_codes(model, 2, batch, top_k=1, progress=False, latent_frames=7))
    runs = [S.sample_codes(model, 2, batch, generator=torch.Generator().manual_seed(s), progress=False,
                           compile=True) for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    state = torch.get_rng_state()
    S.sample_codes(model, 2, batch, generator=torch.Generator().manual_seed(5), progress=False, compile=True)
    assert torch.equal(torch.get_rng_state(), state)  # the seeded default generator is restored


# ------------------------------------------------------------------------------------------------
# longer codes: sliding windows in latent time
# ------------------------------------------------------------------------------------------------
def test_latent_windows():
    assert S.latent_windows(4, 4, 2) == [(0, 0)]
    assert S.latent_windows(7, 4, 2) == [(0, 0), (2, 2), (3, 3)]  # the last window overlaps more
    assert S.latent_windows(9, 4, 2) == [(0, 0), (2, 2), (4, 2), (5, 3)]
    assert S.latent_windows(10, 4, 0) == [(0, 0), (4, 0), (6, 2)]
    for bad in [(3, 4, 2), (7, 4, 4), (7, 4, -1)]:
        with pytest.raises(ValueError, match="latent_frames >= T > context_frames >= 0"):
            S.latent_windows(*bad)


def test_long_sampling_rejects_bad_arguments_before_any_work():
    """Non-int frame counts, bad prefixes and bad context frames are clear errors up front (they
    crashed in torch.zeros / slicing / F.embedding, or a float prefix was silently truncated)."""
    model = random_model("full")  # T = 2, grid (8, 8), 32 codes, downsample_t 2
    for kwargs, error, message in [
        (dict(latent_frames=4.5), TypeError, "latent_frames must be an int"),
        (dict(latent_frames=4.0), TypeError, "latent_frames must be an int"),
        (dict(latent_frames="5"), TypeError, "latent_frames must be an int"),
        (dict(latent_frames=5, context_frames=1.0), TypeError, "context_frames must be an int"),
        (dict(prefix=torch.zeros(1, 1, 8, 8)), ValueError, "prefix must be int64/int32 codes"),
        (dict(prefix=[[0]]), ValueError, "prefix must be int64/int32 codes"),
        (dict(prefix=torch.full((1, 1, 8, 8), 32)), ValueError, r"prefix codes must be in \[0, n_codes=32\)"),
        (dict(prefix=torch.full((1, 1, 8, 8), -1)), ValueError, r"prefix codes must be in \[0, n_codes=32\)"),
        (dict(generator=5), ValueError, "generator must be a torch.Generator on the model's device type"),
    ]:
        with pytest.raises(error, match=message):
            S.sample_codes(model, 1, progress=False, **kwargs)
    for bad in (torch.zeros(3, 2, 32), torch.zeros(3, 32), [[0.0]]):
        with pytest.raises(ValueError, match="encode_context: frames must be"):
            S.encode_context(model.vqvae, bad, window=2)
    assert S.sample_codes(model, 1, progress=False, latent_frames=torch.tensor(3)).shape == (1, 3, 8, 8)


def test_too_long_for_memory_fails_before_listing_windows(monkeypatch):
    """latent_frames whose codes cannot be allocated fail at once (the window listing ran first: an
    endless loop for 10^20 frames)."""
    model = random_model("full")

    def never(*a, **k):
        raise AssertionError("windows listed before the codes were allocated")

    monkeypatch.setattr(S, "latent_windows", never)
    with pytest.raises(RuntimeError, match="can't allocate memory"):  # 10^12 x 64 codes x 8 bytes
        S.sample_codes(model, 1, progress=False, latent_frames=10 ** 12)


def _long_cases():
    """(model, batch, n) for full, sparse, class-conditional and frame-conditional priors with
    T = 4 latent frames."""
    return {
        "full": lambda: (random_model("full", seed=1), None, 2),            # latents (2, 8, 8): T = 2
        "sparse": lambda: (frame_cond_model("sparse"), _frame_batch(), 2),   # + class and frame conditioning
        "class_full": lambda: (random_model("full", class_cond=True, seed=2),
                               {"video": torch.zeros(2, 3, 4, 32, 32), "label": torch.tensor([1, 2])}, 2),
        "frame_full": lambda: (frame_cond_model("full", seed=0), _frame_batch(seed=4), 2),
    }


@pytest.mark.parametrize("handover", ["codes", "reencode"])
@pytest.mark.parametrize("case", ["full", "sparse", "class_full", "frame_full"])
def test_long_greedy_codes_follow_the_prior_window_by_window(case, handover):
    """latent_frames > T, greedy: the first window is plain sampling, and every later latent frame
    is the argmax of the prior's teacher-forced logits over its window (same conditioning), whose
    shared frames are the previous window's codes (``"codes"``) or re-encoded from its pixels
    (``"reencode"``)."""
    model, batch, n = _long_cases()[case]()
    T = model.shape[0]
    frames = 2 * T + 1
    codes = S.sample_codes(model, n, batch, top_k=1, progress=False, latent_frames=frames, handover=handover)
    assert codes.shape == (n, frames, *model.shape[1:]) and codes.dtype == torch.long
    assert torch.equal(codes[:, :T], S.sample_codes(model, n, batch, top_k=1, progress=False))
    cond = model.make_cond(batch) if batch is not None else {}
    windows = S.latent_windows(frames, T, T // 2)
    assert len(windows) >= 3
    covered = torch.zeros(frames, dtype=torch.bool)
    reencoded = []
    for start, prefix in windows:
        window = codes[:, start:start + T]
        if start and handover == "reencode":
            context = S.reencode_context(model.vqvae, previous, prefix)
            reencoded.append(not torch.equal(context, window[:, :prefix]))
            window = torch.cat([context, window[:, prefix:]], dim=1)
        previous = window
        with torch.no_grad():
            _, logits = model(model.vqvae.codebook.dictionary_lookup(window), window, cond)
        assert torch.equal(logits.argmax(-1)[:, prefix:], window[:, prefix:]), (start, prefix)
        covered[start + prefix:start + T] = True
    assert covered.all()
    assert handover == "codes" or any(reencoded)  # the re-encoded context is not the copied codes
    assert codes.unique().numel() > 1 and not torch.equal(codes[:, T:2 * T], codes[:, :T])  # not degenerate


def test_long_sampling_seeded_and_first_window():
    model, batch, n = _long_cases()["sparse"]()
    T = model.shape[0]
    a = S.sample_codes(model, n, batch, generator=torch.Generator().manual_seed(3), progress=False, latent_frames=6,
                       context_frames=1)
    b = S.sample_codes(model, n, batch, generator=torch.Generator().manual_seed(3), progress=False, latent_frames=6,
                       context_frames=1)
    plain = S.sample_codes(model, n, batch, generator=torch.Generator().manual_seed(3), progress=False)
    assert a.shape == (n, 6, *model.shape[1:])
    assert torch.equal(a, b) and torch.equal(a[:, :T], plain)
    with pytest.raises(ValueError, match="context_frames"):
        S.sample_codes(model, n, batch, progress=False, latent_frames=6, context_frames=T)
    with pytest.raises(ValueError, match="latent_frames"):
        S.sample_codes(model, n, batch, progress=False, latent_frames=T - 1)


def test_bf16_decoding_uses_a_copy_of_the_prior():
    """dtype=bfloat16 decodes with a bf16 copy (LayerNorms and frame encoder fp32): logits close to
    fp32's, and the caller's model keeps its fp32 weights and holds no caches."""
    model, batch = frame_cond_model("sparse"), _frame_batch()
    codes = torch.randint(0, 16, (2, *model.shape), generator=torch.Generator().manual_seed(0))
    want = S.teacher_forced_decode(model, codes, batch)
    got = S.teacher_forced_decode(model, codes, batch, dtype=torch.bfloat16)
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    assert float((got - want).norm() / want.norm()) < 0.02  # bf16 rounding, not a different model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.decode_batch() is None
    out = S.sample_codes(model, 2, batch, top_k=1, progress=False, dtype=torch.bfloat16)
    assert out.shape == (2, *model.shape)


def test_bad_sample_and_loss_inputs_are_clear_value_errors():
    """Attack follow-ups: n not a positive int, conditioning videos of the wrong dtype or rank, and a
    batch without 'video' gave raw TypeErrors or conv dtype errors deep in the model."""
    model = frame_cond_model("full")
    batch = _frame_batch(2)
    for n in (2.5, 0, -1, True, "2"):
        with pytest.raises(ValueError, match="n must be a positive int"):
            S.sample_codes(model, n, batch, progress=False)
    with pytest.raises(ValueError, match="float .n, 3, T, H, W. tensor"):
        S.sample_codes(model, 2, dict(batch, video=((batch["video"] + 0.5) * 255).to(torch.uint8)), progress=False)
    with pytest.raises(ValueError, match="float .n, 3, T, H, W. tensor"):
        S.sample_codes(model, 2, dict(batch, video=batch["video"][0]), progress=False)  # 4-D
    with pytest.raises(ValueError, match="needs a batch dict with 'video'"):
        S.sample_codes(model, 2, {"vid": batch["video"]}, progress=False)
    # float64 conditioning frames are fine: they are cast to the weights' dtype
    a = S.sample_codes(model, 2, dict(batch, video=batch["video"].double()), top_k=1, progress=False)
    assert torch.equal(a, S.sample_codes(model, 2, batch, top_k=1, progress=False))
    for bad in ({"vid": batch["video"]}, batch["video"]):
        with pytest.raises(ValueError, match="batch must be a dict with 'video'"):
            model.compute_loss(bad)
