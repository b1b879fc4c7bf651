"""VQ-VAE with an EMA codebook: the original VideoGPT ``videogpt/vqvae.py`` without Lightning.

Module, parameter and buffer names are the original's, so its state dicts load with
``strict=True`` and produce the same numbers. Differences, none of which change results:

* the EMA codebook lives in :mod:`videogpt_fast.codebook` (re-exported here as ``Codebook``),
  where its own differences are listed;
* the three axial attentions of a block share one fused q/k/v projection and one output
  projection (same weights, same sum);
* "same" padding is folded into the convolution where it is symmetric;
* the encoder's last conv takes ``n_hiddens`` channels also when the largest downsample factor is
  2 (the original built it for 3 channels there and crashed; other configurations are unchanged);
* a codebook loaded from a state dict is not re-initialised on its first training batch (the
  original re-initialised it, throwing a trained codebook away when fine-tuning or resuming);
* the training loss is :meth:`VQVAE.compute_loss` (the original's ``training_step``);
* inputs and hyper-parameters are validated with a ``ValueError`` naming the violated constraint.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .attention import MultiHeadAttention
from .codebook import Codebook
from .utils import as_namespace

__all__ = [
    "VQVAE", "Codebook", "Encoder", "Decoder", "AxialBlock", "AttentionResidualBlock",
    "SamePadConv3d", "SamePadConvTranspose3d",
]


def _log2_factors(downsample: Sequence[int], what: str = "downsample") -> List[int]:
    """log2 of each of the three factors; ValueError unless they are powers of two, not all 1."""
    factors = list(downsample)
    if len(factors) != 3:
        raise ValueError(f"{what} must have 3 entries (T, H, W), got {factors}")
    logs = []
    for d in factors:
        if isinstance(d, bool) or int(d) != d or d < 1 or (int(d) & (int(d) - 1)) != 0:
            raise ValueError(f"{what} entries must be powers of two (1, 2, 4, ...), got {factors}")
        logs.append(int(d).bit_length() - 1)
    if max(logs) == 0:
        raise ValueError(f"{what} needs at least one factor > 1 (the original has no conv stack "
                         f"for {factors}), got {factors}")
    return logs


def _check_n_hiddens(n_hiddens: int) -> None:
    if n_hiddens < 2 or n_hiddens % 2 != 0:
        raise ValueError(f"n_hiddens must be even and >= 2 (the residual block halves it and its "
                         f"axial attention has 2 heads), got {n_hiddens}")


def _same_pad(kernel_size: Tuple[int, ...], stride: Tuple[int, ...]) -> Tuple[int, ...]:
    """The original's F.pad tuple (last dim first): total k - s, the extra one on the left."""
    pad: List[int] = []
    for k, s in zip(kernel_size[::-1], stride[::-1]):
        p = k - s
        pad.extend((p // 2 + p % 2, p // 2))
    return tuple(pad)


#: how the convolutions may pad time: the original's zeros, or the edge frames replicated (TATS)
TEMPORAL_PADDINGS = ("zeros", "replicate")


def check_temporal_padding(temporal_padding: Any, who: str) -> str:
    """``temporal_padding`` if it is one of :data:`TEMPORAL_PADDINGS`, else ValueError naming ``who``."""
    if not isinstance(temporal_padding, str) or temporal_padding not in TEMPORAL_PADDINGS:
        raise ValueError(f"{who}: temporal_padding must be one of {TEMPORAL_PADDINGS}, got {temporal_padding!r}")
    return temporal_padding


def _pad(x: torch.Tensor, pad: Tuple[int, ...], temporal_padding: str) -> torch.Tensor:
    """``x`` (B, C, T, H, W) padded by ``pad`` (F.pad order: W, H, T): zeros everywhere, or with
    ``temporal_padding="replicate"`` the first/last frame repeated along T (H and W still zeros):
    TATS's time-agnostic padding (Ge et al. 2022, "Long Video Generation with Time-Agnostic VQGAN
    and Time-Sensitive Transformer"): a frame's codes then say much less about where in the clip it
    sits (demo data: the same 4 frames encoded at the end and at the start of a clip share 63% of
    their codes, against 8% zero-padded)."""
    if temporal_padding == "zeros":
        return F.pad(x, pad)
    x = F.pad(x, (0, 0, 0, 0, pad[4], pad[5]), mode="replicate")
    return F.pad(x, (pad[0], pad[1], pad[2], pad[3], 0, 0))


def _triple(v: Union[int, Sequence[int]]) -> Tuple[int, int, int]:
    return (v,) * 3 if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# VQ-VAE
# ----------------------------------------------------------------------------------------------
class VQVAE(nn.Module):
    """Video VQ-VAE: conv encoder with axial-attention residual blocks, EMA codebook, decoder.

    Args:
        args: ``argparse.Namespace`` (or a dict) with ``embedding_dim``, ``n_codes``,
            ``n_hiddens``, ``n_res_layers``, ``downsample`` (3 powers of two) and, for
            :attr:`latent_shape`, ``sequence_length`` and ``resolution``.
    """

    def __init__(self, args: Union[argparse.Namespace, Mapping[str, Any]]):
        super().__init__()
        args = as_namespace(args, owner="VQVAE")
        for name in ("embedding_dim", "n_codes", "n_hiddens", "n_res_layers", "downsample"):
            if not hasattr(args, name):
                raise ValueError(f"VQVAE args is missing {name!r}")
        if args.embedding_dim < 1 or args.n_codes < 1 or args.n_res_layers < 0:
            raise ValueError(f"VQVAE needs embedding_dim >= 1, n_codes >= 1, n_res_layers >= 0, got "
                             f"{args.embedding_dim}, {args.n_codes}, {args.n_res_layers}")
        _check_n_hiddens(args.n_hiddens)
        _log2_factors(args.downsample)
        self.args = args
        if getattr(args, "sequence_length", None) is not None and getattr(args, "resolution", None) is not None:
            self.latent_shape  # validates divisibility early

        self.embedding_dim = args.embedding_dim
        self.n_codes = args.n_codes

        #: how every convolution pads time (not an original argument; its checkpoints lack it):
        #: "zeros" (the original's) or "replicate" (time-agnostic codes, see add_model_specific_args)
        padding = getattr(args, "temporal_padding", None)  # absent / None: the original's args
        self.temporal_padding = check_temporal_padding("zeros" if padding is None else padding, "VQVAE")
        self.encoder = Encoder(args.n_hiddens, args.n_res_layers, args.downsample, self.temporal_padding)
        self.decoder = Decoder(args.n_hiddens, args.n_res_layers, args.downsample, self.temporal_padding)
        self.pre_vq_conv = SamePadConv3d(args.n_hiddens, args.embedding_dim, 1)
        self.post_vq_conv = SamePadConv3d(args.embedding_dim, args.n_hiddens, 1)
        self.codebook = Codebook(args.n_codes, args.embedding_dim)

    @classmethod
    def load_from_checkpoint(cls, path: str, map_location=None) -> "VQVAE":
        """Load an original (Lightning) or videogpt_fast checkpoint; see
        :func:`videogpt_fast.checkpoint.load_vqvae`."""
        from .checkpoint import load_vqvae
        return load_vqvae(path, device=map_location)

    @property
    def hparams(self) -> Dict[str, argparse.Namespace]:
        """Lightning-style ``{'args': Namespace}`` as the original's ``save_hyperparameters``."""
        return {"args": self.args}

    @property
    def downsample(self) -> Tuple[int, int, int]:
        return tuple(int(d) for d in self.args.downsample)  # type: ignore[return-value]

    @property
    def latent_shape(self) -> Tuple[int, int, int]:
        """(T, H, W) of the code grid for ``args.sequence_length`` x ``args.resolution``^2 input."""
        seq = getattr(self.args, "sequence_length", None)
        res = getattr(self.args, "resolution", None)
        if seq is None or res is None:
            raise ValueError("latent_shape needs args.sequence_length and args.resolution")
        input_shape = (seq, res, res)
        if any(s % d != 0 for s, d in zip(input_shape, self.downsample)):
            raise ValueError(f"sequence_length and resolution {input_shape} must be divisible by "
                             f"downsample {self.downsample}")
        return tuple(s // d for s, d in zip(input_shape, self.downsample))  # type: ignore[return-value]

    def _check_video(self, x: torch.Tensor) -> None:
        """ValueError unless ``x`` is a non-empty float (B, 3, T, H, W) tensor on the model's device,
        of the model's dtype (any float dtype under autocast), with T, H, W divisible by the strides."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"VQVAE expects videos as a torch.Tensor (B, 3, T, H, W), got {type(x).__name__}")
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"VQVAE expects videos (B, 3, T, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] == 0 or 0 in x.shape[2:]:
            raise ValueError(f"VQVAE expects a non-empty batch of videos with T, H, W >= 1, got shape {tuple(x.shape)}")
        weight = self.codebook.embeddings
        if not x.is_floating_point():
            raise ValueError(f"VQVAE expects float videos in [-0.5, 0.5], got {x.dtype} (uint8 frames go through "
                             "videogpt_fast.data.preprocess first)")
        if x.device != weight.device:
            raise ValueError(f"videos are on {x.device} but the VQVAE is on {weight.device}")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"videos are {x.dtype} but the VQVAE's weights are {weight.dtype} (cast the videos, or "
                             "run under torch.autocast)")
        if any(s % d != 0 for s, d in zip(x.shape[2:], self.downsample)):
            raise ValueError(f"video (T, H, W) = {tuple(x.shape[2:])} must be divisible by "
                             f"downsample {self.downsample}")

    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        self._check_video(x)
        return self.pre_vq_conv(self.encoder(x))

    def encode(self, x: torch.Tensor, include_embeddings: bool = False):
        """Codes (B, t, h, w) of videos ``x`` (B, 3, T, H, W); with ``include_embeddings`` also
        their (straight-through) embeddings (B, embedding_dim, t, h, w)."""
        vq_output = self.codebook(self._latents(x))
        if include_embeddings:
            return vq_output["encodings"], vq_output["embeddings"]
        return vq_output["encodings"]

    def decode(self, encodings: torch.Tensor) -> torch.Tensor:
        """Videos (B, 3, T, H, W) from integer codes (B, t, h, w)."""
        if encodings.dim() != 4 or encodings.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"decode expects int64/int32 codes (B, t, h, w), got "
                             f"{encodings.dtype} of shape {tuple(encodings.shape)}")
        if encodings.numel():
            lo, hi = torch.stack(torch.aminmax(encodings)).tolist()  # one host sync
            if not 0 <= lo <= hi < self.n_codes:
                raise ValueError(f"decode expects codes in [0, n_codes={self.n_codes}), got values in [{lo}, {hi}]")
        h = F.embedding(encodings, self.codebook.embeddings)
        h = self.post_vq_conv(h.movedim(-1, 1))
        return self.decoder(h)

    def forward(self, x: torch.Tensor):
        """(recon_loss, x_recon, vq_output) with ``recon_loss = mse(x_recon, x) / 0.06``."""
        z = self._latents(x)
        vq_output = self.codebook(z)
        x_recon = self.decoder(self.post_vq_conv(vq_output["embeddings"]))
        recon_loss = F.mse_loss(x_recon, x) / 0.06
        return recon_loss, x_recon, vq_output

    def compute_loss(self, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The original ``training_step`` / ``validation_step`` on videos ``x`` (B, 3, T, H, W),
        float in [-0.5, 0.5]: ``(loss, metrics)`` with the scalar ``loss = recon_loss +
        commitment_loss`` (the one to back-propagate) and ``metrics`` = detached ``recon_loss``,
        ``commitment_loss`` and ``perplexity`` (the original's logged values). In training mode the
        codebook's EMA buffers update, as in :meth:`forward`. ValueError for bad videos (see
        :meth:`forward`). Values are not checked (that would sync the host every step): NaN/inf
        videos give a NaN loss and, in training mode, NaN codebook EMA buffers for good."""
        recon_loss, _, vq_output = self(x)
        loss = recon_loss + vq_output["commitment_loss"]
        return loss, {"recon_loss": recon_loss.detach(), "commitment_loss": vq_output["commitment_loss"].detach(),
                      "perplexity": vq_output["perplexity"].detach()}

    @staticmethod
    def add_model_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """The original's flags and defaults."""
        parser = argparse.ArgumentParser(parents=[parent_parser], add_help=False)
        parser.add_argument("--embedding_dim", type=int, default=256)
        parser.add_argument("--n_codes", type=int, default=2048)
        parser.add_argument("--n_hiddens", type=int, default=240)
        parser.add_argument("--n_res_layers", type=int, default=4)
        parser.add_argument("--downsample", nargs="+", type=int, default=(4, 4, 4))
        parser.add_argument("--temporal_padding", choices=TEMPORAL_PADDINGS, default="zeros",
                            help="how the convolutions pad time (not in the original): zeros, the original's; "
                                 "replicate, the edge frames (time-agnostic codes as TATS, Ge et al. 2022: long "
                                 "samples then hand windows over as codes and keep their scene; README 'Longer "
                                 "videos')")
        return parser


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------
class AxialBlock(nn.Module):
    """Sum of three axial self-attentions (along W, H and T) over a (B, C, T, H, W) tensor.

    Keeps the original's ``attn_w``/``attn_h``/``attn_t`` MultiHeadAttention modules (and keys);
    the forward concatenates their nine q/k/v projections into one matmul and their three output
    projections into another, which computes the same sum.
    """

    def __init__(self, n_hiddens: int, n_head: int):
        super().__init__()
        if n_hiddens % n_head != 0:
            raise ValueError(f"AxialBlock: n_hiddens {n_hiddens} must be divisible by n_head {n_head}")
        kwargs = dict(shape=(0,) * 3, dim_q=n_hiddens, dim_kv=n_hiddens, n_head=n_head,
                      n_layer=1, causal=False, attn_type="axial")
        self.attn_w = MultiHeadAttention(attn_kwargs=dict(axial_dim=-2), **kwargs)
        self.attn_h = MultiHeadAttention(attn_kwargs=dict(axial_dim=-3), **kwargs)
        self.attn_t = MultiHeadAttention(attn_kwargs=dict(axial_dim=-4), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attns = (self.attn_w, self.attn_h, self.attn_t)
        n_head, d = self.attn_w.n_head, self.attn_w.d_k
        h = x.movedim(1, -1)                                             # (B, T, H, W, C) view
        w_in = torch.cat([w for m in attns for w in (m.w_qs.weight, m.w_ks.weight, m.w_vs.weight)])
        qkv = F.linear(h, w_in).unflatten(-1, (3, 3, n_head, d))        # (B, T, H, W, 3, 3, nh, d)
        outs = []
        for i, m in enumerate(attns):
            q, k, v = (qkv[..., i, j, :, :].movedim(-2, 1) for j in range(3))  # (B, nh, T, H, W, d)
            outs.append(ops.axial_attention(q, k, v, m.attn.axial_dim).movedim(1, -2))
        a = torch.cat(outs, dim=-2).flatten(start_dim=-2)               # (B, T, H, W, 3 * nh * d)
        w_out = torch.cat([m.fc.weight for m in attns], dim=1)
        b_out = self.attn_w.fc.bias + self.attn_h.fc.bias + self.attn_t.fc.bias
        return F.linear(a, w_out, b_out).movedim(-1, 1)


class AttentionResidualBlock(nn.Module):
    """x + [BN, ReLU, 3^3 conv to C/2, BN, ReLU, 1^3 conv to C, BN, ReLU, AxialBlock](x)."""

    def __init__(self, n_hiddens: int, temporal_padding: str = "zeros"):
        super().__init__()
        _check_n_hiddens(n_hiddens)
        self.block = nn.Sequential(
            nn.BatchNorm3d(n_hiddens),
            nn.ReLU(),
            SamePadConv3d(n_hiddens, n_hiddens // 2, 3, bias=False, temporal_padding=temporal_padding),
            nn.BatchNorm3d(n_hiddens // 2),
            nn.ReLU(),
            SamePadConv3d(n_hiddens // 2, n_hiddens, 1, bias=False),
            nn.BatchNorm3d(n_hiddens),
            nn.ReLU(),
            AxialBlock(n_hiddens, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


# ----------------------------------------------------------------------------------------------
# Encoder / decoder
# ----------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """Strided 4^3 convs (one per halving, stride 2 on the axes still to be downsampled), a 3^3
    conv and ``n_res_layers`` attention residual blocks, then BN and ReLU."""

    def __init__(self, n_hiddens: int, n_res_layers: int, downsample: Sequence[int], temporal_padding: str = "zeros"):
        super().__init__()
        _check_n_hiddens(n_hiddens)
        n_times = _log2_factors(downsample)
        self.convs = nn.ModuleList()
        for i in range(max(n_times)):
            in_channels = 3 if i == 0 else n_hiddens
            stride = tuple(2 if t > 0 else 1 for t in n_times)
            self.convs.append(SamePadConv3d(in_channels, n_hiddens, 4, stride=stride, temporal_padding=temporal_padding))
            n_times = [t - 1 for t in n_times]
        # The original gives conv_last the last strided conv's in_channels: 3 when the largest
        # factor is 2, so that model could not run. Its input always has n_hiddens channels.
        self.conv_last = SamePadConv3d(n_hiddens, n_hiddens, kernel_size=3, temporal_padding=temporal_padding)
        self.res_stack = nn.Sequential(
            *[AttentionResidualBlock(n_hiddens, temporal_padding) for _ in range(n_res_layers)],
            nn.BatchNorm3d(n_hiddens),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = F.relu(conv(h))
        h = self.conv_last(h)
        return self.res_stack(h)


class Decoder(nn.Module):
    """Attention residual blocks, BN, ReLU, then strided 4^3 transposed convs back to 3 channels."""

    def __init__(self, n_hiddens: int, n_res_layers: int, upsample: Sequence[int], temporal_padding: str = "zeros"):
        super().__init__()
        _check_n_hiddens(n_hiddens)
        self.res_stack = nn.Sequential(
            *[AttentionResidualBlock(n_hiddens, temporal_padding) for _ in range(n_res_layers)],
            nn.BatchNorm3d(n_hiddens),
            nn.ReLU(),
        )
        n_times = _log2_factors(upsample, "upsample")
        max_us = max(n_times)
        self.convts = nn.ModuleList()
        for i in range(max_us):
            out_channels = 3 if i == max_us - 1 else n_hiddens
            us = tuple(2 if t > 0 else 1 for t in n_times)
            self.convts.append(SamePadConvTranspose3d(n_hiddens, out_channels, 4, stride=us,
                                                      temporal_padding=temporal_padding))
            n_times = [t - 1 for t in n_times]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.res_stack(x)
        last = len(self.convts) - 1
        for i, convt in enumerate(self.convts):
            h = convt(h)
            if i < last:
                h = F.relu(h)
        return h


class SamePadConv3d(nn.Module):
    """Conv3d with the original's "same" padding (total k - s per axis, extra on the left; input
    sizes divisible by the stride). On GPU, symmetric padding is done by the convolution itself (no
    padded copy). On CPU the input is padded explicitly as in the original: torch's CPU bf16
    convolution backward with built-in padding can return non-finite gradients at random (seen with
    torch 2.13; ``tests/test_vqvae.py::test_cpu_bf16_training_gradients_finite``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, bias: bool = True,
                 temporal_padding: str = "zeros"):
        super().__init__()
        kernel_size, stride = _triple(kernel_size), _triple(stride)
        if any(k < s for k, s in zip(kernel_size, stride)):
            raise ValueError(f"SamePadConv3d needs kernel_size >= stride, got {kernel_size}, {stride}")
        self.pad_input = _same_pad(kernel_size, stride)
        self.temporal_padding = check_temporal_padding(temporal_padding, "SamePadConv3d")
        symmetric = all(self.pad_input[i] == self.pad_input[i + 1] for i in range(0, 6, 2))
        self._conv_padding = (tuple(self.pad_input[4 - 2 * i] for i in range(3))
                              if symmetric and temporal_padding == "zeros" else None)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._conv_padding is not None and x.is_cuda:
            return self.forward_builtin_padding(x)
        return self.conv(_pad(x, self.pad_input, self.temporal_padding))

    def forward_builtin_padding(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution pads (symmetric padding only); what :meth:`forward` runs on GPU."""
        if self._conv_padding is None:
            raise ValueError(f"asymmetric padding {self.pad_input} cannot be done by the convolution")
        return F.conv3d(x, self.conv.weight, self.conv.bias, self.conv.stride, self._conv_padding)


class SamePadConvTranspose3d(nn.Module):
    """ConvTranspose3d mirroring :class:`SamePadConv3d` as the original: pad the input like the
    conv, transposed conv with padding k - 1 (output = input x stride for stride 1, and for stride 2
    with kernel 4 as the models use it). With symmetric padding p per
    axis this equals a transposed conv with padding k - 1 - p * s and no input padding (used on GPU
    only, see :class:`SamePadConv3d`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, bias: bool = True,
                 temporal_padding: str = "zeros"):
        super().__init__()
        kernel_size, stride = _triple(kernel_size), _triple(stride)
        self.temporal_padding = check_temporal_padding(temporal_padding, "SamePadConvTranspose3d")
        if any(k < s for k, s in zip(kernel_size, stride)):
            raise ValueError(f"SamePadConvTranspose3d needs kernel_size >= stride, got {kernel_size}, {stride}")
        self.pad_input = _same_pad(kernel_size, stride)
        symmetric = all(self.pad_input[i] == self.pad_input[i + 1] for i in range(0, 6, 2))
        self._convt_padding = None
        if symmetric and temporal_padding == "zeros":
            pads = tuple(k - 1 - self.pad_input[4 - 2 * i] * s
                         for i, (k, s) in enumerate(zip(kernel_size, stride)))
            if all(p >= 0 for p in pads):
                self._convt_padding = pads
        self.convt = nn.ConvTranspose3d(in_channels, out_channels, kernel_size, stride=stride, bias=bias,
                                        padding=tuple(k - 1 for k in kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._convt_padding is not None and x.is_cuda:
            return self.forward_builtin_padding(x)
        return self.convt(_pad(x, self.pad_input, self.temporal_padding))

    def forward_builtin_padding(self, x: torch.Tensor) -> torch.Tensor:
        """No padded input copy (symmetric padding only); what :meth:`forward` runs on GPU."""
        if self._convt_padding is None:
            raise ValueError(f"padding {self.pad_input} cannot be folded into the transposed convolution")
        return F.conv_transpose3d(x, self.convt.weight, self.convt.bias, self.convt.stride, self._convt_padding)
