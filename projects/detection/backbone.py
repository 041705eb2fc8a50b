"""The EVA ViT with its simple feature pyramid as a Detectron2 ``Backbone``.

Both parts come from the core (:class:`eva_transfer.vit.EVAViT`, :class:`eva_transfer.pyramid.SimpleFeaturePyramid`);
this module only adds what Detectron2 asks of a backbone: ``output_shape``, ``size_divisibility`` and
``padding_constraints``. Parameter names match ViTDet/EVA detection checkpoints: the ViT is ``net`` and the
pyramid stages are ``simfp_2`` .. ``simfp_5`` directly on the backbone (``backbone.net.blocks.0...``,
``backbone.simfp_2.0.weight``).
"""

from __future__ import annotations

from typing import Any, Optional

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import Tensor

from eva_transfer.presets import build_backbone
from eva_transfer.pyramid import SimpleFeaturePyramid
from eva_transfer.vit import EVAViT

__all__ = ["EVADetectionBackbone", "build_eva_backbone"]


class EVADetectionBackbone(SimpleFeaturePyramid, Backbone):
    """EVA ViT + simple feature pyramid.

    Args:
        net: the ViT (stride ``net.patch_size``), e.g. ``build_backbone("eva_g_det")``.
        out_channels: width of every pyramid level.
        scale_factors: pyramid levels relative to the ViT map (4, 2, 1, 0.5 give p2..p5).
        top_level: add p6 by max-pooling the last level.
        square_pad: pad every batch to this square size (large-scale jitter training); 0 = no square padding.
        freeze_patch_embed: keep the ViT's patch embedding fixed (``requires_grad=False``), as the EVA-01
            detection configs do.
    Returns (forward): for images ``(B, 3, H, W)`` (``H, W`` multiples of :attr:`size_divisibility`), a dict
    ``{"p2": (B, out_channels, H/4, W/4), ..., "p6": (B, out_channels, H/64, W/64)}``.
    """

    def __init__(
        self,
        net: EVAViT,
        out_channels: int = 256,
        scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5),
        top_level: bool = True,
        square_pad: int = 0,
        freeze_patch_embed: bool = False,
    ):
        if not isinstance(net, EVAViT):
            raise TypeError(f"net must be an eva_transfer EVAViT, got {type(net).__name__}")
        super().__init__(net.embed_dim, net.stride, out_channels, scale_factors, top_level)
        self.net = net
        self.square_pad = square_pad
        self._out_features = list(self.stages)
        self._out_feature_channels = {k: out_channels for k in self.stages}
        self._out_feature_strides = dict(self.strides)
        self._size_divisibility = max(self.strides.values())
        self.freeze_patch_embed = freeze_patch_embed
        if freeze_patch_embed:
            for p in net.patch_embed.parameters():
                p.requires_grad_(False)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self.square_pad}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {k: ShapeSpec(channels=self.out_channels, stride=s) for k, s in self.strides.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(B, 3, H, W)`` normalised images -> ``{"p2": ..., "p6": ...}``."""
        if x.shape[-2] % self._size_divisibility or x.shape[-1] % self._size_divisibility:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of {self._size_divisibility} "
                "(Detectron2 pads batches to backbone.size_divisibility; pad inputs the same way)"
            )
        return super().forward(self.net(x))


def build_eva_det_backbone(
    preset: str,
    out_channels: int = 256,
    square_pad: int = 0,
    scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5),
    **vit_overrides: Any,
) -> EVADetectionBackbone:
    """Backbone from a core preset name (``eva_g_det``, ``eva_b_det``, ``eva_tiny_det``, ...) and EVAViT overrides."""
    return EVADetectionBackbone(
        build_backbone(preset, **vit_overrides), out_channels, scale_factors, square_pad=square_pad
    )


@BACKBONE_REGISTRY.register()
def build_eva_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> EVADetectionBackbone:
    """yacs entry point: ``MODEL.BACKBONE.NAME: "build_eva_backbone"`` with ``MODEL.EVA.PRESET`` (a core preset),
    optional ``MODEL.EVA.OVERRIDES`` (a dict of EVAViT arguments), ``MODEL.EVA.SQUARE_PAD`` and
    ``MODEL.FPN.OUT_CHANNELS``; see :func:`add_eva_config`."""
    eva = cfg.MODEL.EVA
    return build_eva_det_backbone(
        eva.PRESET, cfg.MODEL.FPN.OUT_CHANNELS, eva.SQUARE_PAD, **dict(eva.OVERRIDES or {})
    )


def add_eva_config(cfg) -> None:
    """Adds the ``MODEL.EVA`` node to a yacs config (before ``merge_from_file``)."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.EVA = CN(new_allowed=True)
    cfg.MODEL.EVA.PRESET = "eva_g_det"
    cfg.MODEL.EVA.SQUARE_PAD = 0
    cfg.MODEL.EVA.OVERRIDES = CN(new_allowed=True)
