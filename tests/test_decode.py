"""The draw of the decode step (videogpt_fast.decode.sample_logits): top-k, top-p, temperature, and the
distribution it samples (chi-square against the original's softmax + multinomial)."""
import pytest
import torch

from videogpt_fast import decode as S


# chi-square critical values at p = 0.001 by degrees of freedom
_CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52}


def _chi_square(draws: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(draws, minlength=probs.numel()).double()
    expected = probs.double() * draws.numel()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a code outside the support was drawn"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_sample_logits_top_k_top_p_temperature():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    assert torch.equal(S.sample_logits(logits, top_k=1), logits.argmax(-1))
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([S.sample_logits(logits, top_k=3, generator=gen) for _ in range(200)], 1)
    top3 = logits.topk(3, dim=-1).indices
    assert (draws.unsqueeze(-1) == top3.unsqueeze(1)).any(-1).all()
    assert all(len(set(row.tolist())) == 3 for row in draws)  # all three are reachable
    # top_p: the smallest set of most likely codes reaching p
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    draws = torch.stack([S.sample_logits(probs.log(), top_p=0.7, generator=gen) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}
    draws = torch.stack([S.sample_logits(probs.log(), top_p=0.81, generator=gen) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1, 2}
    # temperature sharpens: at T=0.1 code 0 (p=0.5) dominates
    draws = torch.stack([S.sample_logits(probs.log(), temperature=0.1, generator=gen) for _ in range(300)])
    assert (draws == 0).float().mean() > 0.95
    for bad in (dict(temperature=0.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            S.sample_logits(logits, **bad)


@pytest.mark.parametrize("kw, expected", [
    (dict(), [0.05, 0.4, 0.25, 0.15, 0.1, 0.05]),
    (dict(temperature=0.5), None),   # probs ** 2, renormalised
    (dict(top_k=3), [0.0, 0.4 / 0.8, 0.25 / 0.8, 0.15 / 0.8, 0.0, 0.0]),
    (dict(top_p=0.7), [0.0, 0.4 / 0.8, 0.25 / 0.8, 0.15 / 0.8, 0.0, 0.0]),  # 0.4 + 0.25 < 0.7
])
def test_draw_distribution_chi_square(kw, expected):
    """20000 draws (fixed seed: deterministic) from a 6-code distribution pass a chi-square test at
    p = 0.001 against the distribution the original samples from (softmax of the logits, with the
    temperature / top-k / top-p restriction renormalised)."""
    probs = torch.tensor([0.05, 0.4, 0.25, 0.15, 0.1, 0.05])
    if expected is None:
        expected = probs ** 2 / (probs ** 2).sum()
    expected = torch.as_tensor(expected)
    logits = probs.log().expand(20000, -1) + 3.0  # a constant shift: the same distribution
    draws = S.sample_logits(logits, generator=torch.Generator().manual_seed(0), **kw)
    assert draws.shape == (20000,) and draws.dtype == torch.long
    dof = int((expected > 0).sum()) - 1
    assert _chi_square(draws, expected) < _CHI2_999[dof]
    # a wrong distribution fails the same test: the test has power
    wrong = torch.roll(expected, 1)
    if (wrong > 0).equal(expected > 0):
        assert _chi_square(draws, wrong) > _CHI2_999[dof]


def test_default_draw_is_torch_multinomial():
    """With the defaults the draw consumes the generator as ``torch.multinomial(softmax, 1)`` does and
    gives its codes, row for row (so seeded sampling reproduces the original's loop)."""
    logits = torch.randn(64, 37, generator=torch.Generator().manual_seed(1)) * 3
    ours = S.sample_logits(logits, generator=torch.Generator().manual_seed(9))
    theirs = torch.multinomial(logits.softmax(-1), 1, generator=torch.Generator().manual_seed(9)).squeeze(-1)
    assert torch.equal(ours, theirs)
    assert ours.unique().numel() > 5


@pytest.mark.parametrize("dtype", [torch.int64, "bf16", torch.bool])
def test_prior_dtype_must_be_a_floating_dtype(dtype):
    """A non-floating ``dtype`` is a clear error (it was nn.Module.to's TypeError, or for a string
    'Invalid device string')."""
    import argparse
    from videogpt_fast.gpt import VideoGPT
    from videogpt_fast.vqvae import VQVAE
    vq = VQVAE(argparse.Namespace(embedding_dim=4, n_codes=8, n_hiddens=8, n_res_layers=1, downsample=[2, 2, 2],
                                  sequence_length=4, resolution=8))
    gpt = VideoGPT(dict(vqvae="unused", n_cond_frames=0, class_cond=False, hidden_dim=24, heads=2, layers=1,
                        dropout=0.0, attn_type="full", attn_dropout=0.0), vqvae=vq).eval()
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        S.DecodePlan.from_model(gpt, 1, dtype=dtype)
