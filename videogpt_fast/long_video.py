"""Decoding latents longer than the trained grid into pixels (issue 16).

The VQ-VAE has no fixed temporal size: its convolutions are translation-invariant, and its axial
attention (:class:`videogpt_fast.vqvae.AxialBlock`) has no position embedding and no stored length
(``shape=(0, 0, 0)``), so :meth:`VQVAE.decode` accepts codes of any number of latent frames in one
pass. Its temporal attention then spans the whole long video, a length it was not trained on;
:func:`decode_windows` is the alternative that keeps every decode at the trained length and
cross-fades overlapping windows at the seams. :func:`decode_latents` picks one by name.

Measured on the demo's moving shapes (``videogpt-fast demo --frames 24``; the demo prints both),
the one-pass decode reconstructs real long clips at least as well as the windowed one and has no
seams, so it is the default (``decode="one_pass"``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .sample import latent_windows

__all__ = ["DECODE_MODES", "decode_windows", "decode_latents"]

#: the ways :func:`decode_latents` turns long codes into pixels
DECODE_MODES = ("one_pass", "windows")


def _ramp(n: int, like: torch.Tensor) -> torch.Tensor:
    """n weights rising linearly in (0, 1): (i + 1) / (n + 1), on ``like``'s device and dtype."""
    return torch.arange(1, n + 1, device=like.device, dtype=like.dtype) / (n + 1)


@torch.no_grad()
def decode_windows(vqvae: nn.Module, codes: torch.Tensor, window: int, overlap: Optional[int] = None) -> torch.Tensor:
    """Decode codes (n, t, h, w) int64 in windows of ``window`` latent frames overlapping by
    ``overlap`` latent frames (default ``window // 2``; the last window ends at the last frame and
    may overlap more, as :func:`videogpt_fast.sample.latent_windows` places them). Each window is
    one :meth:`VQVAE.decode`; in the pixel frames two windows share, the earlier one fades out and
    the later one fades in linearly (weights normalised to sum to one).

    Returns videos (n, 3, t * ds_t, h * ds_h, w * ds_w) in the decoder's dtype, unclamped like
    ``decode``.
    ValueError unless ``t >= window > overlap >= 0``.
    """
    if codes.dim() != 4:
        raise ValueError(f"decode_windows: codes must be (n, t, h, w), got {tuple(codes.shape)}")
    t = codes.shape[1]
    overlap = window // 2 if overlap is None else overlap
    windows = latent_windows(t, window, overlap)
    ds = int(vqvae.downsample[0])
    out = weight = None
    for k, (start, shared) in enumerate(windows):
        x = vqvae.decode(codes[:, start:start + window])
        w = x.new_ones(window * ds)
        if shared:  # fade in over the frames shared with the previous window
            w[:shared * ds] = _ramp(shared * ds, x)
        if k + 1 < len(windows):  # fade out over the frames the next window shares
            nxt_start, nxt_shared = windows[k + 1]
            a = (nxt_start - start) * ds
            w[a:a + nxt_shared * ds] = torch.minimum(w[a:a + nxt_shared * ds], 1 - _ramp(nxt_shared * ds, x))
        if out is None:
            out = x.new_zeros(*x.shape[:2], t * ds, *x.shape[3:])
            weight = x.new_zeros(t * ds)
        sl = slice(start * ds, (start + window) * ds)
        out[:, :, sl] += x * w.view(-1, 1, 1)
        weight[sl] += w
    return out / weight.view(-1, 1, 1)


@torch.no_grad()
def decode_latents(vqvae: nn.Module, codes: torch.Tensor, decode: str = "one_pass",
                   window: Optional[int] = None) -> torch.Tensor:
    """Videos (n, 3, T, H, W) in [0, 1] from codes (n, t, h, w): ``decode="one_pass"`` (one
    :meth:`VQVAE.decode` over all t latent frames) or ``"windows"`` (:func:`decode_windows` with
    windows of ``window`` latent frames, default the VQ-VAE's trained latent length). ValueError for
    another mode."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    if decode == "windows" and codes.shape[1] > (window or vqvae.latent_shape[0]):
        videos = decode_windows(vqvae, codes, window or vqvae.latent_shape[0])
    else:
        videos = vqvae.decode(codes)
    return torch.clamp(videos, -0.5, 0.5) + 0.5
