"""The simple feature pyramid (ViTDet) as an MMDetection neck.

Config::

    neck=dict(type="EVASimpleFPN", in_channels=1408, out_channels=256)

It is :class:`eva_transfer.EVASimpleFeaturePyramid` (module names ``simfp_{2,3,4,5}``, the ViTDet / EVA layout, under
``neck.`` in the detector's state dict), taking the backbone's one-map tuple and returning mmdet's tuple of levels
ordered by stride: p2..p6 (strides 4..64) by default, so the RPN's anchor strides are ``[4, 8, 16, 32, 64]`` and the
RoI extractors' ``featmap_strides`` ``[4, 8, 16, 32]``.
"""

from __future__ import annotations

from typing import Sequence, Union

from mmdet.registry import MODELS
from torch import Tensor

from eva_transfer.pyramid import EVASimpleFeaturePyramid

__all__ = ["EVASimpleFPN"]


@MODELS.register_module()
class EVASimpleFPN(EVASimpleFeaturePyramid):
    """Args: as :class:`eva_transfer.EVASimpleFeaturePyramid` (``in_channels``, ``in_stride``, ``out_channels``,
    ``scale_factors``, ``top_level``); ``init_cfg`` is accepted for mmdet's builder and must be None (the convs are
    initialised as in ViTDet)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        in_stride: int = 16,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_level: bool = True,
        init_cfg: None = None,
    ) -> None:
        if init_cfg is not None:
            raise ValueError(f"EVASimpleFPN has no init_cfg (ViTDet initialisation), got {init_cfg!r}")
        super().__init__(in_channels, in_stride, out_channels, scale_factors, top_level)

    @property
    def num_outs(self) -> int:
        return len(self.stages)

    def forward(self, inputs: Union[Tensor, Sequence[Tensor]]) -> tuple[Tensor, ...]:
        x = inputs[-1] if isinstance(inputs, (tuple, list)) else inputs
        outs = super().forward(x)
        return tuple(outs[name] for name in self.stages)


if "LN2d" not in MODELS.module_dict:  # mmdet's projects/ViTDet registers the same name when imported first
    from eva_transfer.pyramid import LayerNorm2d

    MODELS.register_module("LN2d", module=LayerNorm2d)
