"""Inception-v1 I3D (Carreira & Zisserman, 2017), the FVD feature network of the original VideoGPT.

A port of ``videogpt/fvd/pytorch_i3d.py`` (itself from piergiaj/pytorch-i3d) with the same class
names, constructor arguments, module names and state-dict keys, so the original
``i3d_pretrained_400.pt`` loads with ``strict=True`` and the logits are the same. Differences:
a symmetric "same" padding of a convolution is passed to the convolution instead of a separate
``F.pad`` copy (same values), inputs are checked up front, and the cases that crash in the original
(``spatial_squeeze=False``, a ``final_endpoint`` before ``'Logits'``) return the unsqueezed logits
and the endpoint's features respectively.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _triple

__all__ = ["MaxPool3dSamePadding", "Unit3D", "InceptionModule", "InceptionI3d"]


def _same_padding(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> Tuple[int, ...]:
    """TensorFlow 'SAME' padding for (t, h, w) as an ``F.pad`` tuple (w_front, w_back, h_f, h_b, t_f, t_b)."""
    pad = []
    for s, k, st in zip(sizes, _triple(kernel), _triple(stride)):
        total = max(k - st, 0) if s % st == 0 else max(k - s % st, 0)
        pad.append((total // 2, total - total // 2))
    (tf, tb), (hf, hb), (wf, wb) = pad
    return (wf, wb, hf, hb, tf, tb)


class MaxPool3dSamePadding(nn.MaxPool3d):
    """3D max pooling with TensorFlow 'SAME' zero padding computed from the input size."""

    def compute_pad(self, dim: int, s: int) -> int:
        """Total padding of dimension ``dim`` (0, 1, 2 = t, h, w) for an input of size ``s``."""
        if s % self.stride[dim] == 0:
            return max(self.kernel_size[dim] - self.stride[dim], 0)
        return max(self.kernel_size[dim] - (s % self.stride[dim]), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zero padding (not -inf) as in the original; every pool of I3D follows a ReLU.
        x = F.pad(x, _same_padding(x.shape[2:], self.kernel_size, self.stride))
        return super().forward(x)


class Unit3D(nn.Module):
    """Conv3d ('SAME' padding, no bias by default) + BatchNorm3d + activation."""

    def __init__(self, in_channels: int, output_channels: int,
                 kernel_shape: Sequence[int] = (1, 1, 1), stride: Sequence[int] = (1, 1, 1),
                 padding=0, activation_fn: Optional[Callable] = F.relu, use_batch_norm: bool = True,
                 use_bias: bool = False, name: str = "unit_3d"):
        super().__init__()
        self._output_channels = output_channels
        self._kernel_shape = kernel_shape
        self._stride = stride
        self._use_batch_norm = use_batch_norm
        self._activation_fn = activation_fn
        self._use_bias = use_bias
        self.name = name
        self.padding = padding  # kept for compatibility; the padding is always 'SAME' from the input size
        self.conv3d = nn.Conv3d(in_channels=in_channels, out_channels=output_channels,
                                kernel_size=kernel_shape, stride=stride, padding=0, bias=use_bias)
        if use_batch_norm:
            self.bn = nn.BatchNorm3d(output_channels, eps=1e-5, momentum=0.001)

    def compute_pad(self, dim: int, s: int) -> int:
        """Total padding of dimension ``dim`` (0, 1, 2 = t, h, w) for an input of size ``s``."""
        if s % self._stride[dim] == 0:
            return max(self._kernel_shape[dim] - self._stride[dim], 0)
        return max(self._kernel_shape[dim] - (s % self._stride[dim]), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wf, wb, hf, hb, tf, tb = _same_padding(x.shape[2:], self._kernel_shape, self._stride)
        conv = self.conv3d
        if wf == wb and hf == hb and tf == tb:
            x = F.conv3d(x, conv.weight, conv.bias, conv.stride, (tf, hf, wf))
        else:
            x = conv(F.pad(x, (wf, wb, hf, hb, tf, tb)))
        if self._use_batch_norm:
            x = self.bn(x)
        if self._activation_fn is F.relu:
            x = F.relu(x, inplace=True)  # x is a fresh tensor here
        elif self._activation_fn is not None:
            x = self._activation_fn(x)
        return x


class InceptionModule(nn.Module):
    """Four-branch Inception block: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1, concatenated on channels."""

    def __init__(self, in_channels: int, out_channels: Sequence[int], name: str):
        super().__init__()
        if len(out_channels) != 6:
            raise ValueError(f"InceptionModule: out_channels must have 6 entries, got {len(out_channels)}")
        c = out_channels
        self.b0 = Unit3D(in_channels, c[0], kernel_shape=[1, 1, 1], padding=0, name=name + "/Branch_0/Conv3d_0a_1x1")
        self.b1a = Unit3D(in_channels, c[1], kernel_shape=[1, 1, 1], padding=0, name=name + "/Branch_1/Conv3d_0a_1x1")
        self.b1b = Unit3D(c[1], c[2], kernel_shape=[3, 3, 3], name=name + "/Branch_1/Conv3d_0b_3x3")
        self.b2a = Unit3D(in_channels, c[3], kernel_shape=[1, 1, 1], padding=0, name=name + "/Branch_2/Conv3d_0a_1x1")
        self.b2b = Unit3D(c[3], c[4], kernel_shape=[3, 3, 3], name=name + "/Branch_2/Conv3d_0b_3x3")
        self.b3a = MaxPool3dSamePadding(kernel_size=[3, 3, 3], stride=(1, 1, 1), padding=0)
        self.b3b = Unit3D(in_channels, c[5], kernel_shape=[1, 1, 1], padding=0, name=name + "/Branch_3/Conv3d_0b_1x1")
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (endpoint, kind, arguments) in network order; channel counts of the original.
_ARCH = (
    ("Conv3d_1a_7x7", "conv", dict(output_channels=64, kernel_shape=[7, 7, 7], stride=(2, 2, 2), padding=(3, 3, 3))),
    ("MaxPool3d_2a_3x3", "pool", dict(kernel_size=[1, 3, 3], stride=(1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", dict(output_channels=64, kernel_shape=[1, 1, 1], padding=0)),
    ("Conv3d_2c_3x3", "conv", dict(output_channels=192, kernel_shape=[3, 3, 3], padding=1)),
    ("MaxPool3d_3a_3x3", "pool", dict(kernel_size=[1, 3, 3], stride=(1, 2, 2))),
    ("Mixed_3b", "mixed", [64, 96, 128, 16, 32, 32]),
    ("Mixed_3c", "mixed", [128, 128, 192, 32, 96, 64]),
    ("MaxPool3d_4a_3x3", "pool", dict(kernel_size=[3, 3, 3], stride=(2, 2, 2))),
    ("Mixed_4b", "mixed", [192, 96, 208, 16, 48, 64]),
    ("Mixed_4c", "mixed", [160, 112, 224, 24, 64, 64]),
    ("Mixed_4d", "mixed", [128, 128, 256, 24, 64, 64]),
    ("Mixed_4e", "mixed", [112, 144, 288, 32, 64, 64]),
    ("Mixed_4f", "mixed", [256, 160, 320, 32, 128, 128]),
    ("MaxPool3d_5a_2x2", "pool", dict(kernel_size=[2, 2, 2], stride=(2, 2, 2))),
    ("Mixed_5b", "mixed", [256, 160, 320, 32, 128, 128]),
    ("Mixed_5c", "mixed", [384, 192, 384, 48, 128, 128]),
)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D; ``forward`` maps (B, C, T, H, W) videos in [-1, 1] to (B, num_classes) logits.

    Endpoints are registered under their TensorFlow names (``Conv3d_1a_7x7``, ``Mixed_3b``, ...) and
    the classifier as ``logits``, exactly as in the original, so its state dicts load unchanged.
    The network downsamples 8x in time and 32x in space and then average-pools a (2, 7, 7) window,
    so an input needs at least 9 frames of 193x193 pixels (FVD uses 16 frames of 224x224).
    """

    VALID_ENDPOINTS = (
        "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
        "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
        "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c", "Logits", "Predictions",
    )

    def __init__(self, num_classes: int = 400, spatial_squeeze: bool = True, final_endpoint: str = "Logits",
                 name: str = "inception_i3d", in_channels: int = 3, dropout_keep_prob: float = 0.5):
        if final_endpoint not in self.VALID_ENDPOINTS:
            raise ValueError(f"Unknown final endpoint {final_endpoint}; valid: {self.VALID_ENDPOINTS}")
        super().__init__()
        self._num_classes = num_classes
        self._spatial_squeeze = spatial_squeeze
        self._final_endpoint = final_endpoint
        self._in_channels = in_channels
        self.logits = None

        self.end_points = {}
        channels = in_channels
        for end_point, kind, spec in _ARCH:
            if kind == "conv":
                module = Unit3D(in_channels=channels, name=name + end_point, **spec)
                channels = spec["output_channels"]
            elif kind == "pool":
                module = MaxPool3dSamePadding(padding=0, **spec)
            else:
                module = InceptionModule(channels, spec, name + end_point)
                channels = spec[0] + spec[2] + spec[4] + spec[5]
            self.end_points[end_point] = module
            if final_endpoint == end_point:
                break
        else:
            # 'Logits' / 'Predictions'. Registered before the endpoints, as in the original, so the
            # state dict has the same key order ('logits.conv3d.weight' first).
            self.avg_pool = nn.AvgPool3d(kernel_size=[2, 7, 7], stride=(1, 1, 1))
            self.dropout = nn.Dropout(dropout_keep_prob)
            self.logits = self._make_logits(channels, num_classes)
        self._feature_channels = channels
        self.build()

    @staticmethod
    def _make_logits(in_channels: int, num_classes: int) -> Unit3D:
        return Unit3D(in_channels=in_channels, output_channels=num_classes, kernel_shape=[1, 1, 1], padding=0,
                      activation_fn=None, use_batch_norm=False, use_bias=True, name="logits")

    def replace_logits(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` classes."""
        self._num_classes = num_classes
        self.logits = self._make_logits(self._feature_channels, num_classes)

    def build(self) -> None:
        """Register the endpoint modules under their names."""
        for k, module in self.end_points.items():
            self.add_module(k, module)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self._in_channels:
            raise ValueError(f"InceptionI3d expects (B, {self._in_channels}, T, H, W) input, got shape "
                             f"{tuple(x.shape)}")
        if self.logits is None:
            return
        size = list(x.shape[2:])
        for end_point in self.end_points:
            module = self._modules[end_point]
            stride = module._stride if isinstance(module, Unit3D) else getattr(module, "stride", (1, 1, 1))
            size = [math.ceil(s / st) for s, st in zip(size, stride)]
        if size[0] < 2 or size[1] < 7 or size[2] < 7:
            raise ValueError(f"InceptionI3d input (T, H, W)={tuple(x.shape[2:])} is too small: the final "
                             f"features {tuple(size)} must be at least (2, 7, 7), i.e. T >= 9 and H, W >= 193")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        for end_point in self.VALID_ENDPOINTS:
            if end_point in self.end_points:
                x = self._modules[end_point](x)  # _modules: works under DataParallel
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits averaged over time: (B, num_classes) (spatially squeezed at 224x224 input)."""
        self._check_input(x)
        x = self._features(x)
        if self.logits is None:
            return x
        x = self.logits(self.dropout(self.avg_pool(x)))
        if self._spatial_squeeze:
            x = x.squeeze(3).squeeze(3)
        return x.mean(dim=2)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pooled features of the last endpoint: (B, 1024, T', H', W')."""
        self._check_input(x)
        x = self._features(x)
        return self.avg_pool(x) if self.logits is not None else x
