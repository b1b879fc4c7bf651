"""The strided block-sparse layout (videogpt_fast.sparsity.StridedSparsityConfig) against the
original's layouts (fixtures) and its definition."""
from __future__ import annotations

import pytest
import torch

from conftest import load_fixture
from videogpt_fast.attention import SparseAttention
from videogpt_fast.sparsity import StridedSparsityConfig


def _parse_key(key: str):
    shape, kind = key.split("_")
    return tuple(int(s) for s in shape.split("x")), kind == "causal"


def test_make_layout_matches_original_fixtures():
    layouts = load_fixture("sparse_layouts.pt")
    assert len(layouts) >= 10
    for key, expected in layouts.items():
        shape, causal = _parse_key(key)
        for n_head in (1, 3):
            layout = StridedSparsityConfig(shape, n_head=n_head, causal=causal, block=32,
                                           num_local_blocks=4).make_layout()
            assert layout.shape == (n_head, *expected.shape), key
            for h in range(n_head):
                assert torch.equal(layout[h].to(torch.uint8), expected), f"{key} head {h}"


def _direct_layout(shape, causal, block, num_local_blocks):
    """The strided layout from its definition: block (i, j) is on iff j is one of the
    ``num_local_blocks`` blocks before i (or after, when bidirectional), or the block coordinates
    of i and j differ in exactly one axis other than the last of the block grid (j <= i causal)."""
    cfg = StridedSparsityConfig(shape, 1, causal, block, num_local_blocks)
    grid = cfg._block_shape
    nb = cfg.num_blocks
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in grid], indexing="ij"), -1).view(nb, -1)
    i = torch.arange(nb).view(-1, 1)
    j = torch.arange(nb).view(1, -1)
    local = (j >= i - num_local_blocks) & ((j <= i) if causal else (j < i + num_local_blocks))
    diff = coords.view(nb, 1, -1) != coords.view(1, nb, -1)
    strided = (diff.sum(-1) == 1) & diff[..., :-1].any(-1)
    strided |= i == j
    if causal:
        strided &= j <= i
    return (local | strided).long()


@pytest.mark.parametrize("shape, causal, block, local", [
    ((4, 8, 8), True, 32, 4), ((4, 8, 8), False, 32, 4), ((8, 16, 16), True, 16, 3),
    ((3, 4, 16), False, 16, 2), ((2, 6, 8), True, 16, 1), ((4, 64), True, 32, 2),
])
def test_make_layout_matches_definition(shape, causal, block, local):
    layout = StridedSparsityConfig(shape, 2, causal, block, local).make_layout()
    expected = _direct_layout(shape, causal, block, local)
    assert torch.equal(layout[0], expected) and torch.equal(layout[1], expected)


@pytest.mark.parametrize("causal", [True, False])
def test_non_block_layout_row(causal):
    cfg = StridedSparsityConfig((4, 8, 8), n_head=2, causal=causal, block=32, num_local_blocks=4)
    layout = cfg.make_layout()
    layout[1, 5, 0] = 1 - layout[1, 5, 0]  # make the heads differ
    L = cfg.seq_len
    keys = torch.arange(L)
    for row in (0, 1, 31, 32, 100, 171, L - 1):
        got = cfg.get_non_block_layout_row(layout, row)
        assert got.shape == (2, 1, L)
        expected = torch.stack([layout[h, row // 32][keys // 32].bool() & (keys <= row) for h in range(2)])
        assert torch.equal(got.bool().squeeze(1), expected), row
    assert layout.shape == (2, 8, 8)  # the input layout is not modified
    assert torch.equal(layout[0], cfg.make_layout()[0])


def test_make_sparse_attn_mask():
    cfg = StridedSparsityConfig((4, 8, 8), n_head=2, causal=True, block=32, num_local_blocks=4)
    layout = cfg.make_layout()
    mask = cfg.make_sparse_attn_mask()
    blocks = [(h, i, j) for h in range(2) for i in range(8) for j in range(8) if layout[h, i, j]]
    assert mask.shape == (1, len(blocks), 32, 32)
    tril = torch.ones(32, 32).tril()
    for n, (_, i, j) in enumerate(blocks):
        assert torch.equal(mask[0, n], tril if i == j else torch.ones(32, 32)), (i, j)


def test_sparsity_config_errors():
    with pytest.raises(ValueError, match="not divisible by the block size 32"):
        StridedSparsityConfig((3, 5, 5), 1, True, 32, 4)
    with pytest.raises(ValueError, match="divisible by the block size 32"):  # 96 % 32 == 0, 48 % 32 != 0
        StridedSparsityConfig((2, 48), 1, True, 32, 4)
    with pytest.raises(ValueError, match="num_local_blocks"):
        StridedSparsityConfig((4, 8, 8), 1, True, 32, 0)
    with pytest.raises(ValueError, match="block size 32"):
        SparseAttention((2, 4, 2), n_head=2, causal=True)
