"""3D ResNet-34 frame encoder for VideoGPT's frame conditioning.

A port of the original ``videogpt/resnet.py`` with identical module names (so checkpoints load
with ``strict=True``) and identical numbers: every "batch norm" is a LayerNorm over channels
computed in fp32, the stem is CIFAR-style by default and the last group outputs ``resnet_dim``
channels, returned channels-last as (B, T', H', W', resnet_dim).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Conv3d", "ChannelLayerNorm", "NormReLU", "ResidualBlock", "BlockGroup", "ResNet", "resnet34"]


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and numbers) that zero-pads its input explicitly on CPU:
    torch's CPU bf16 convolution backward with built-in padding returns non-finite gradients at
    random (seen with torch 2.13; ``tests/test_gpt.py::test_frame_encoder_cpu_bf16_gradients_finite``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda or not any(self.padding) or self.padding_mode != "zeros":
            return super().forward(x)
        pt, ph, pw = self.padding
        return F.conv3d(F.pad(x, (pw, pw, ph, ph, pt, pt)), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension (dim 1) of a (B, C, ...) tensor."""

    def __init__(self, in_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A channels-last view (no copy): the result keeps that layout, which conv3d accepts.
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class NormReLU(nn.Module):
    """Channel LayerNorm in fp32, cast back to the input dtype, then an optional ReLU.
    ``affine`` is accepted for signature compatibility and unused, as in the original."""

    def __init__(self, channels: int, relu: bool = True, affine: bool = True):
        super().__init__()
        self.relu = relu
        self.norm = ChannelLayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ln = self.norm.norm
        # fp32 statistics and affine even when the module itself was cast to half precision
        weight = ln.weight.float() if ln.weight is not None else None
        bias = ln.bias.float() if ln.bias is not None else None
        y = F.layer_norm(x.float().movedim(1, -1), ln.normalized_shape, weight, bias, ln.eps)
        y = y.movedim(-1, 1).to(x.dtype)
        return F.relu(y, inplace=True) if self.relu else y


class ResidualBlock(nn.Module):
    """Two 3x3x3 convolutions with norms, plus an identity or 1x1x1-projection shortcut."""

    def __init__(self, in_channels: int, filters: int, stride, use_projection: bool = False):
        super().__init__()
        if use_projection:
            self.proj_conv = Conv3d(in_channels, filters, kernel_size=1, stride=stride, bias=False)
            self.proj_bnr = NormReLU(filters, relu=False)
        self.conv1 = Conv3d(in_channels, filters, kernel_size=3, stride=stride, bias=False, padding=1)
        self.bnr1 = NormReLU(filters)
        self.conv2 = Conv3d(filters, filters, kernel_size=3, stride=1, bias=False, padding=1)
        self.bnr2 = NormReLU(filters)
        self.use_projection = use_projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.proj_bnr(self.proj_conv(x)) if self.use_projection else x
        x = self.bnr1(self.conv1(x))
        x = self.bnr2(self.conv2(x))
        return F.relu(x + shortcut, inplace=True)


class BlockGroup(nn.Module):
    """A projecting ``start_block`` followed by ``blocks - 1`` identity-shortcut blocks."""

    def __init__(self, in_channels: int, filters: int, blocks: int, stride):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"BlockGroup needs blocks >= 1, got {blocks}")
        self.start_block = ResidualBlock(in_channels, filters, stride, use_projection=True)
        self.blocks = nn.Sequential(*[ResidualBlock(filters, filters, 1) for _ in range(1, blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.start_block(x))


def _halving_stride(n_times_downsample: np.ndarray) -> Tuple[int, ...]:
    return tuple(2 if d > 0 else 1 for d in n_times_downsample)


class ResNet(nn.Module):
    """3D ResNet with four block groups that downsample (T, H, W) by ``stride`` (powers of two).

    Args:
        in_channels: input channels (3 for RGB video).
        layers: residual blocks per group, e.g. ``[3, 4, 6, 3]``.
        width_multiplier: channel multiplier of the 64/128/256 group widths.
        stride: total downsampling per axis, each a power of two, at most 8 (cifar stem) or 32.
        resnet_dim: output channels.
        cifar_stem: 3x3x3 stride-1 stem (True) or 7x7x7 strided stem with max pooling (False).
    """

    def __init__(self, in_channels: int, layers: Sequence[int], width_multiplier: int,
                 stride: Sequence[int], resnet_dim: int = 240, cifar_stem: bool = True):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs 4 group sizes in layers, got {list(layers)}")
        if any(d < 1 or int(math.log2(d)) != math.log2(d) for d in stride):
            raise ValueError(f"ResNet stride must be powers of two, got {tuple(stride)}")
        self.width_multiplier = width_multiplier
        self.resnet_dim = resnet_dim
        w = width_multiplier
        n_down = np.array([int(math.log2(d)) for d in stride])

        if cifar_stem:
            self.stem = nn.Sequential(
                Conv3d(in_channels, 64 * w, kernel_size=3, padding=1, bias=False),
                NormReLU(64 * w),
            )
        else:
            stem_stride = _halving_stride(n_down)
            n_down -= 1  # the strided conv
            n_down[-2:] = n_down[-2:] - 1  # the spatial max pooling
            self.stem = nn.Sequential(
                Conv3d(in_channels, 64 * w, kernel_size=7, stride=stem_stride, bias=False, padding=3),
                NormReLU(64 * w),
                nn.MaxPool3d(kernel_size=3, stride=(1, 2, 2), padding=1),
            )

        self.group1 = BlockGroup(64 * w, 64 * w, blocks=layers[0], stride=1)
        s = _halving_stride(n_down)
        n_down -= 1
        self.group2 = BlockGroup(64 * w, 128 * w, blocks=layers[1], stride=s)
        s = _halving_stride(n_down)
        n_down -= 1
        self.group3 = BlockGroup(128 * w, 256 * w, blocks=layers[2], stride=s)
        s = _halving_stride(n_down)
        n_down -= 1
        self.group4 = BlockGroup(256 * w, resnet_dim, blocks=layers[3], stride=s)
        if any(d > 0 for d in n_down):
            raise ValueError(f"ResNet cannot downsample by stride {tuple(stride)} (cifar_stem={cifar_stem}): "
                             f"{n_down.clip(min=0).tolist()} halvings per axis left over")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T', H', W', resnet_dim)."""
        if x.dim() != 5:
            raise ValueError(f"ResNet expects a video batch (B, C, T, H, W), got shape {tuple(x.shape)}")
        x = self.stem(x)
        x = self.group1(x)
        x = self.group2(x)
        x = self.group3(x)
        x = self.group4(x)
        return x.movedim(1, -1).contiguous()


def resnet34(width_multiplier: int, stride: Sequence[int], cifar_stem: bool = True,
             resnet_dim: int = 240) -> ResNet:
    """ResNet-34 ([3, 4, 6, 3] blocks) on RGB input, the original's signature:
    ``resnet34(1, (1, 4, 4), resnet_dim=240)`` is VideoGPT's frame encoder."""
    return ResNet(3, [3, 4, 6, 3], width_multiplier, stride, cifar_stem=cifar_stem, resnet_dim=resnet_dim)
