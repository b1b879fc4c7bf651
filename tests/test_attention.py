"""The attention modules (videogpt_fast.attention): sparse forward against decode, the causal mask
in the original's state-dict format, decoding against the forward. The strided layout is tested in
test_sparsity.py, the plain-PyTorch block-sparse attention in test_kernel_reference.py."""
from __future__ import annotations

import pytest
import torch

from conftest import assert_close
from videogpt_fast.attention import FullAttention, MultiHeadAttention, SparseAttention
from videogpt_fast.kernels import reference as R


def test_sparse_attention_module_forward_and_decode_agree():
    """SparseAttention's block-sparse forward and its one-row decode path (the original's
    dense-masked decoding) give the same outputs at every position."""
    gen = torch.Generator().manual_seed(5)
    shape, H, D = (2, 4, 8), 2, 8
    attn = SparseAttention(shape, H, causal=True, block=16, num_local_blocks=1)
    q, k, v = (torch.randn(1, H, *shape, D, generator=gen) for _ in range(3))
    full = attn(q, k, v).flatten(2, -2)
    qf = q.flatten(2, -2)
    for pos in range(64):
        row = attn.decode(qf[:, :, pos:pos + 1], k.flatten(2, -2), v.flatten(2, -2), torch.tensor([pos]))
        assert_close(row[:, :, 0], full[:, :, pos], msg=str(pos))
        # the original's signature: forward(q, k, v, decode_step, decode_idx)
        q1 = qf[:, :, pos:pos + 1].view(1, H, 1, 1, 1, D)
        assert torch.equal(attn(q1, k, v, pos, None).flatten(2, -2), row)
    # several queries at once (a prefix written in one pass): the position mask and layout rows
    pos = torch.tensor([0, 17, 40, 63])
    rows = attn.decode(qf[:, :, pos], k.flatten(2, -2), v.flatten(2, -2), pos)
    assert_close(rows, full[:, :, pos])


# ----------------------------------------------------------------------------------------------
# FullAttention's original-format mask buffer
# ----------------------------------------------------------------------------------------------
def test_full_attention_mask_in_state_dict_and_checked_on_load():
    mha = MultiHeadAttention((2, 2, 3), 8, 8, 2, 1, causal=True, attn_type="full",
                             attn_kwargs=dict(attn_dropout=0.0))
    sd = mha.state_dict()
    assert torch.equal(sd["attn.mask"], torch.ones(12, 12).tril())
    assert not any(name == "mask" for name, _ in mha.attn.named_buffers())  # not held in memory
    assert mha.load_state_dict(sd, strict=True)
    bad = dict(sd, **{"attn.mask": torch.ones(5, 5)})
    with pytest.raises(RuntimeError, match="mask has shape"):
        mha.load_state_dict(bad, strict=True)
    non_causal = FullAttention((2, 3), causal=False, attn_dropout=0.0)
    assert "mask" not in non_causal.state_dict()


def test_full_attention_decode_matches_causal_forward():
    gen = torch.Generator().manual_seed(11)
    attn = FullAttention((3, 4), causal=True, attn_dropout=0.0).eval()
    q, k, v = (torch.randn(2, 2, 3, 4, 6, generator=gen) for _ in range(3))
    full = attn(q, k, v).flatten(2, -2)
    ref = R.blocksparse_attention_reference_dense(q.flatten(2, -2), k.flatten(2, -2), v.flatten(2, -2),
                                                  torch.ones(1, 1), 12, True)
    assert_close(full, ref)
    kf, vf = k.flatten(2, -2), v.flatten(2, -2)
    for pos in range(12):
        # the cache holds zeros after pos, as during sampling
        kc, vc = kf.clone(), vf.clone()
        kc[:, :, pos + 1:] = 0
        vc[:, :, pos + 1:] = 0
        row = attn.decode(q.flatten(2, -2)[:, :, pos:pos + 1], kc, vc, torch.tensor([pos]))
        assert_close(row[:, :, 0], full[:, :, pos], msg=str(pos))
        original = attn(q.flatten(2, -2)[:, :, pos:pos + 1].unsqueeze(-2), kc.view_as(k), vc.view_as(v), pos, None)
        assert torch.equal(original.flatten(2, -2), row)
    pos = torch.tensor([3, 4, 11])
    assert_close(attn.decode(q.flatten(2, -2)[:, :, pos], kf, vf, pos), full[:, :, pos])
