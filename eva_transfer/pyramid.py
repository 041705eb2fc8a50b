"""Simple feature pyramid (ViTDet): p2..p6 from the single stride-16 ViT map.

Module names follow the ViTDet layout (``simfp_{stage}.{index}``), so fine-tuned ViTDet/EVA detection checkpoints
load into it unchanged.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerNorm2d", "ConvNorm", "EVASimpleFeaturePyramid"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an ``(N, C, H, W)`` map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        # In training the result is handed on in the standard (N, C, H, W) layout: the permuted view would make the
        # next convolution's backward pass run on a channels-last input, which oneDNN does 2-3x slower at batch 1
        # (docs/records/performance.md). Inference keeps the view (no copy).
        return x.contiguous() if x.requires_grad else x


class ConvNorm(nn.Conv2d):
    """Conv2d followed by a channel norm held as ``.norm`` (bias-free conv); with ``norm_layer=None`` no norm and
    a conv bias, as Detectron2's ``Conv2d`` with ``norm=""``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        norm_layer: Optional[Callable[[int], nn.Module]] = LayerNorm2d,
    ):
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=norm_layer is None)
        self.norm = norm_layer(out_ch) if norm_layer is not None else nn.Identity()
        nn.init.kaiming_uniform_(self.weight, a=1)  # c2_xavier_fill, as in ViTDet

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class EVASimpleFeaturePyramid(nn.Module):
    """Feature pyramid from one map.

    Args:
        in_channels: width ``C`` of the input map.
        in_stride: stride of the input map (16 for the EVA detection backbone).
        out_channels: width of every output level.
        scale_factors: resampling of the input per level: 4 (two transposed convs), 2 (one), 1, 0.5 (max-pool).
        top_level: add a further level by stride-2 max-pooling the last one (p6).
        norm_layer: the channel norm, called with the width (default :class:`LayerNorm2d`, ViTDet's ``"LN"``);
            ``None`` for none (convs with bias). Module names do not depend on it.
    Returns (forward): dict ``{"p2": (B, out, H/4, W/4), ..., "p6": (B, out, H/64, W/64)}`` for input ``H x W``
    of the image (keys named ``p{log2(stride)}``).
    """

    def __init__(
        self,
        in_channels: int,
        in_stride: int = 16,
        out_channels: int = 256,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_level: bool = True,
        norm_layer: Optional[Callable[[int], nn.Module]] = LayerNorm2d,
    ):
        super().__init__()
        self.scale_factors = tuple(scale_factors)
        self.stages: list[str] = []
        strides = []
        for scale in self.scale_factors:
            dim = in_channels
            if scale == 4.0:
                layers = [
                    nn.ConvTranspose2d(dim, dim // 2, 2, 2),
                    norm_layer(dim // 2) if norm_layer is not None else nn.Identity(),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2),
                ]
                dim = dim // 4
            elif scale == 2.0:
                layers = [nn.ConvTranspose2d(dim, dim // 2, 2, 2)]
                dim = dim // 2
            elif scale == 1.0:
                layers = []
            elif scale == 0.5:
                layers = [nn.MaxPool2d(2, 2)]
            else:
                raise ValueError(f"scale factor {scale} is not supported (use 4, 2, 1 or 0.5)")
            layers += [
                ConvNorm(dim, out_channels, 1, norm_layer),
                ConvNorm(out_channels, out_channels, 3, norm_layer),
            ]
            stride = int(in_stride / scale)
            stage = int(math.log2(stride))
            self.add_module(f"simfp_{stage}", nn.Sequential(*layers))
            self.stages.append(f"p{stage}")
            strides.append(stride)
        self.top_level = top_level
        if top_level:
            self.stages.append(f"p{int(math.log2(strides[-1])) + 1}")
            strides.append(strides[-1] * 2)
        self.strides = dict(zip(self.stages, strides))
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        # a ViT's map is a channels-last view; see LayerNorm2d.forward for why training copies it (also for a
        # frozen backbone, whose map needs no gradient: the convolutions' weight gradients read it)
        if torch.is_grad_enabled():
            x = x.contiguous()
        outs = {}
        for name in self.stages[: len(self.scale_factors)]:
            outs[name] = getattr(self, f"simfp_{name[1:]}")(x)
        if self.top_level:
            last = outs[self.stages[len(self.scale_factors) - 1]]
            outs[self.stages[-1]] = F.max_pool2d(last, kernel_size=1, stride=2, padding=0)
        return outs
