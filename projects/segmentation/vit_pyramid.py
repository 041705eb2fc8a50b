"""A plain EVA ViT with EVA-02's four-scale pyramid as an MMSegmentation backbone (UperNet on EVA-02).

Config::

    backbone=dict(
        type="EVAViTFeaturePyramid",
        preset="eva02_base_seg",                    # an eva_transfer preset
        backbone_overrides=dict(drop_path_rate=0.15),
        out_indices=(3, 5, 7, 11),                  # blocks whose outputs make the four maps
        norm_cfg=dict(type="BN"),                   # the norm inside the 4x branch; SyncBN via the runner's sync_bn
        init_cfg=dict(type="Pretrained", checkpoint="path/to/eva02_B_pt_in21k_p14to16.pt"),
    )

As EVA-02's segmentation backbone (``EVA-02/seg/backbone/eva2.py``, ``EVA2.forward_features``): the outputs of the
blocks ``out_indices`` (no final norm; the CLS token dropped) become ``(B, C, H/p, W/p)`` maps, and at patch 16
the four maps are made by

- 4x: transposed conv (kernel 2, stride 2), norm, GELU, transposed conv (kernel 2, stride 2) -> stride 4;
- 2x: one transposed conv (kernel 2, stride 2) -> stride 8;
- 1x: unchanged -> stride 16;
- 1/2: max pooling (kernel 2, stride 2) -> stride 32.

At patch 8: 2x transposed conv, unchanged, max pooling 2, max pooling 4 (strides 4, 8, 16, 32). One index in
``out_indices`` feeds that block's map to all four operations, as the authors allow. The transposed convs keep the
width, so every map has ``embed_dim`` channels. ``init_cfg`` follows :mod:`eva_transfer_projects.mmengine_init`
as :class:`~eva_transfer_projects.segmentation.backbone.EVAViTAdapter`'s does: a ``Pretrained`` file is loaded
into the ViT by :func:`eva_transfer.load_checkpoint`.
"""

from __future__ import annotations

from typing import Optional, Sequence

from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from eva_transfer import build_eva_vit
from eva_transfer_projects.mmengine_init import InitCfg, split_init_cfg

from .backbone import norm_layer_from_cfg

__all__ = ["EVAViTFeaturePyramid", "pyramid_ops"]


def _up2(dim: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)


def pyramid_ops(dim: int, patch_size: int, norm_layer) -> nn.ModuleList:
    """EVA-02's four scale operations for a ``patch_size`` ViT (16 or 8), giving strides 4, 8, 16, 32."""
    if patch_size == 16:
        ops = [
            nn.Sequential(_up2(dim), norm_layer(dim), nn.GELU(), _up2(dim)),
            nn.Sequential(_up2(dim)),
            nn.Identity(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        ]
    elif patch_size == 8:
        ops = [
            nn.Sequential(_up2(dim)),
            nn.Identity(),
            nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2)),
            nn.Sequential(nn.MaxPool2d(kernel_size=4, stride=4)),
        ]
    else:
        raise ValueError(f"EVA-02's pyramid is defined for patch 16 or 8, got patch {patch_size}")
    return nn.ModuleList(ops)


@MODELS.register_module()
class EVAViTFeaturePyramid(BaseModule):
    """EVA ViT + EVA-02's pyramid; ``forward(x (B, 3, H, W))`` returns four maps of ``embed_dim`` channels at
    strides 4, 8, 16, 32 of the patch grid ``(H // p, W // p)`` (``4 * (H // 16)`` ... ``(H // 16) // 2`` at p 16).

    Args:
        preset: an ``eva_transfer`` preset name (``eva02_base_seg``, ``eva02_large_seg``, ``eva02_tiny_seg``).
        backbone_overrides: EVAViT arguments replacing the preset's (``drop_path_rate``, ``img_size``, ...).
        out_indices: the blocks whose outputs feed the four operations, ascending (four of them, or one).
        norm_cfg: the mmcv norm inside the 4x branch (the authors': SyncBatchNorm; ``BN`` here is converted to
            SyncBN by the runner's ``sync_bn`` when training is distributed).
        init_cfg: ``dict(type="Pretrained", checkpoint=path, prefix=None)`` (ViT weights, loaded by
            ``init_weights``) and/or mmengine initialisers.
    """

    def __init__(
        self,
        preset: str = "eva02_base_seg",
        backbone_overrides: Optional[dict] = None,
        out_indices: Sequence[int] = (3, 5, 7, 11),
        norm_cfg: Optional[dict] = None,
        init_cfg: InitCfg = None,
    ) -> None:
        self._pretrained, initialisers = split_init_cfg(init_cfg, "EVAViTFeaturePyramid")
        super().__init__(init_cfg=initialisers or None)
        self.vit = build_eva_vit(preset, **dict(backbone_overrides or {}))
        depth = len(self.vit.blocks)
        self.out_indices = tuple(int(i) for i in out_indices)
        if len(self.out_indices) not in (1, 4):
            raise ValueError(f"out_indices takes four block indexes (or one), got {list(out_indices)}")
        if any(not 0 <= i < depth for i in self.out_indices):
            raise ValueError(f"out_indices {list(out_indices)} must be block indexes in [0, {depth})")
        if list(self.out_indices) != sorted(set(self.out_indices)):
            raise ValueError(f"out_indices must be ascending and distinct, got {list(out_indices)}")
        norm_layer = norm_layer_from_cfg(norm_cfg or dict(type="BN"))
        self.pyramid = pyramid_ops(self.vit.embed_dim, self.vit.patch_size, norm_layer)

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    def init_weights(self) -> None:
        """mmengine's initialisers of ``init_cfg`` (and the children's own), then the ``Pretrained`` file."""
        super().init_weights()
        for entry in self._pretrained:
            entry.load_into(self.vit)

    def block_maps(self, x: Tensor) -> list[Tensor]:
        """The ``(B, C, H/p, W/p)`` maps of the blocks ``out_indices`` (plain block outputs, no final norm)."""
        return self.vit.forward_intermediates(
            x, indices=list(self.out_indices), norm=False, stop_early=True, intermediates_only=True
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        maps = self.block_maps(x)
        if len(maps) == 1:
            maps = maps * 4
        return tuple(op(m) for op, m in zip(self.pyramid, maps))
