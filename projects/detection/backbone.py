"""The EVA ViT as Detectron2 backbones: the ViT alone, and the simple feature pyramid composed on a backbone.

Both parts come from the core (:class:`eva_transfer.vit.EVAViT`, :class:`eva_transfer.pyramid.EVASimpleFeaturePyramid`).

- :class:`EVAViTNet` is the ViT alone as a Detectron2 ``Backbone`` (``{"last_feat": (B, C, H/16, W/16)}``
  with ``output_shape()``); it is an :class:`EVAViT`, so checkpoints, presets and layer decay treat it as one. It
  can feed Detectron2's ``SimpleFeaturePyramid``, ``FPN`` or any other meta-architecture.
- :class:`EVADetectionBackbone` is the simple feature pyramid wrapped around a backbone (any Detectron2 backbone;
  an :class:`EVAViT` is turned into an :class:`EVAViTNet`), as Detectron2's ``SimpleFeaturePyramid`` wraps
  its ``net``, with ``top_block`` and ``norm`` options.

Parameter names match ViTDet/EVA detection checkpoints: the ViT is ``net`` and the pyramid stages are ``simfp_2``
.. ``simfp_5`` directly on the backbone (``backbone.net.blocks.0...``, ``backbone.simfp_2.0.weight``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import Tensor, nn

from eva_transfer.presets import build_eva_vit, preset_config
from eva_transfer.pyramid import EVASimpleFeaturePyramid, LayerNorm2d
from eva_transfer.vit import EVAViT

__all__ = [
    "EVADetectionBackbone",
    "EVAViTNet",
    "build_eva_backbone",
    "build_eva_det_backbone",
    "build_eva_vit_backbone",
]


class EVAViTNet(EVAViT, Backbone):
    """The EVA ViT alone as a Detectron2 ``Backbone``.

    Takes every :class:`EVAViT` argument, plus ``out_feature`` (the name of its one output). ``forward`` returns
    ``{out_feature: (B, C, H/p, W/p)}``; ``output_shape()`` gives its width and stride. Inputs of any size of at
    least one patch work (windowed attention pads internally); ``size_divisibility`` is the patch size.
    """

    def __init__(self, *args: Any, out_feature: str = "last_feat", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._set_out_feature(out_feature)

    def _set_out_feature(self, out_feature: str) -> None:
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: self.embed_dim}
        self._out_feature_strides = {out_feature: self.patch_size}

    @classmethod
    def from_vit(cls, vit: EVAViT, out_feature: str = "last_feat") -> EVAViTNet:
        """Turns an existing :class:`EVAViT` (e.g. from ``build_eva_vit``) into this class in place, keeping its
        weights and parameter names; returns it."""
        if not isinstance(vit, EVAViT):
            raise TypeError(f"expected an eva_transfer EVAViT, got {type(vit).__name__}")
        if not isinstance(vit, cls):
            vit.__class__ = cls
        vit._set_out_feature(out_feature)
        return vit

    @property
    def size_divisibility(self) -> int:
        return self.patch_size

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(B, 3, H, W)`` -> ``{out_feature: (B, C, H/p, W/p)}``."""
        return {self._out_features[0]: EVAViT.forward(self, x)}


def _norm_layer(norm: Any):
    """A channel-norm builder from Detectron2's ``norm`` argument: ``"LN"`` (ViTDet's), ``""``/``None`` (none), any
    name or callable :func:`detectron2.layers.get_norm` accepts."""
    if norm == "LN":
        return LayerNorm2d
    if norm in ("", None):
        return None
    return lambda channels: get_norm(norm, channels)


class EVADetectionBackbone(EVASimpleFeaturePyramid, Backbone):
    """Simple feature pyramid composed on a backbone (by default the EVA ViT).

    Args:
        net: the backbone it wraps: an :class:`EVAViT` (made an :class:`EVAViTNet`), e.g.
            ``build_eva_vit("eva_g_det")``, or any Detectron2 ``Backbone``.
        out_channels: width of every pyramid level.
        scale_factors: pyramid levels relative to the input map (4, 2, 1, 0.5 give p2..p5 from stride 16).
        top_level: add p6 by max-pooling the last level (ignored when ``top_block`` is given).
        square_pad: pad every batch to this square size (large-scale jitter training); 0 = no square padding.
        freeze_patch_embed: keep the ViT's patch embedding fixed (``requires_grad=False``), as the EVA-01
            detection configs do.
        in_feature: the ``net`` output the pyramid is built on (default: its last).
        top_block: a Detectron2 top block (``LastLevelMaxPool()``, ``LastLevelP6P7(...)``) adding levels after the
            last, fed by the level or ``net`` output named by its ``in_feature``.
        norm: ``"LN"`` (ViTDet's, default), ``""`` (none), or any Detectron2 norm name (``"BN"``, ``"GN"``, ...).
    Returns (forward): for images ``(B, 3, H, W)`` (``H, W`` multiples of :attr:`size_divisibility`), a dict
    ``{"p2": (B, out_channels, H/4, W/4), ..., "p6": (B, out_channels, H/64, W/64)}``.
    """

    def __init__(
        self,
        net: nn.Module,
        out_channels: int = 256,
        scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5),
        top_level: bool = True,
        square_pad: int = 0,
        *,
        in_feature: Optional[str] = None,
        top_block: Optional[nn.Module] = None,
        norm: Any = "LN",
        freeze_patch_embed: bool = False,
    ):
        if isinstance(net, EVAViT):
            net = EVAViTNet.from_vit(net)
        if not isinstance(net, Backbone):
            raise TypeError(
                f"net must be an eva_transfer EVAViT or a Detectron2 Backbone, got {type(net).__name__}"
            )
        shapes = net.output_shape()
        in_feature = in_feature or list(shapes)[-1]
        if in_feature not in shapes:
            raise ValueError(f"in_feature {in_feature!r} is not an output of net (outputs: {list(shapes)})")
        spec = shapes[in_feature]
        super().__init__(
            spec.channels,
            spec.stride,
            out_channels,
            scale_factors,
            top_level and top_block is None,
            norm_layer=_norm_layer(norm),
        )
        self.net = net
        self.in_feature = in_feature
        self.square_pad = square_pad
        self.top_block = top_block
        if top_block is not None:
            last = int(math.log2(self.strides[self.stages[-1]]))
            for i in range(top_block.num_levels):
                name = f"p{last + 1 + i}"
                self.stages.append(name)
                self.strides[name] = 2 ** (last + 1 + i)
        self._out_features = list(self.stages)
        self._out_feature_channels = {k: out_channels for k in self.stages}
        self._out_feature_strides = dict(self.strides)
        self._size_divisibility = max(self.strides.values())
        self.freeze_patch_embed = freeze_patch_embed
        if freeze_patch_embed:
            if not hasattr(net, "patch_embed"):
                raise ValueError(f"freeze_patch_embed: {type(net).__name__} has no patch_embed")
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
        feats = self.net(x)
        outs = super().forward(feats[self.in_feature])
        if self.top_block is not None:
            src = self.top_block.in_feature
            extra = self.top_block(feats[src] if src in feats else outs[src])
            outs.update(zip(self.stages[len(outs) :], extra))
        return outs


def build_eva_det_backbone(
    preset: str,
    out_channels: int = 256,
    square_pad: int = 0,
    scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5),
    **vit_overrides: Any,
) -> EVADetectionBackbone:
    """Backbone from a core preset name (``eva_g_det``, ``eva_b_det``, ``eva_tiny_det``, ...) and EVAViT overrides."""
    return EVADetectionBackbone(
        build_eva_vit(preset, **vit_overrides), out_channels, scale_factors, square_pad=square_pad
    )


@BACKBONE_REGISTRY.register()
def build_eva_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> EVADetectionBackbone:
    """yacs entry point: ``MODEL.BACKBONE.NAME: "build_eva_backbone"`` with ``MODEL.EVA.PRESET`` (a core preset),
    optional ``MODEL.EVA.OVERRIDES`` (a dict of EVAViT arguments), ``MODEL.EVA.SQUARE_PAD`` and
    ``MODEL.FPN.OUT_CHANNELS`` / ``MODEL.FPN.NORM``; see :func:`add_eva_config`."""
    eva = cfg.MODEL.EVA
    net = build_eva_vit(eva.PRESET, **dict(eva.OVERRIDES or {}))
    return EVADetectionBackbone(
        net, cfg.MODEL.FPN.OUT_CHANNELS, square_pad=eva.SQUARE_PAD, norm=cfg.MODEL.FPN.NORM or "LN"
    )


@BACKBONE_REGISTRY.register()
def build_eva_vit_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> EVAViTNet:
    """yacs entry point for the ViT alone (``{"last_feat": stride-16 map}``), for meta-architectures that put
    their own neck on it: ``MODEL.BACKBONE.NAME: "build_eva_vit_backbone"`` with ``MODEL.EVA.PRESET`` and
    ``MODEL.EVA.OVERRIDES``."""
    eva = cfg.MODEL.EVA
    return EVAViTNet(**preset_config(eva.PRESET, **dict(eva.OVERRIDES or {})))


def add_eva_config(cfg) -> None:
    """Adds the ``MODEL.EVA`` node to a yacs config (before ``merge_from_file``)."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.EVA = CN(new_allowed=True)
    cfg.MODEL.EVA.PRESET = "eva_g_det"
    cfg.MODEL.EVA.SQUARE_PAD = 0
    cfg.MODEL.EVA.OVERRIDES = CN(new_allowed=True)
