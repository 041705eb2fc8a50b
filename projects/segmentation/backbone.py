"""The EVA ViT-Adapter as an MMSegmentation backbone.

Config::

    backbone=dict(
        type="EVAViTAdapter",
        preset="eva_g_seg",                         # an eva_transfer preset
        backbone_overrides=dict(drop_path_rate=0.5, use_act_checkpoint=True),
        adapter=dict(conv_inplane=64, deform_num_heads=16, n_points=4, deform_ratio=0.5, cffn_ratio=0.25),
        norm_cfg=dict(type="BN"),                   # or GN; SyncBN via the runner's ``sync_bn`` when distributed
        init_cfg=dict(type="Pretrained", checkpoint="path/to/eva_or_mmseg_checkpoint.pth"),
    )

``init_cfg`` follows mmengine's convention as the MMDetection backbone's does
(:mod:`eva_transfer_projects.mmengine_init`): a ``Pretrained`` file is loaded into the ViT-Adapter by
:func:`eva_transfer.load_checkpoint` (any format it reads: EVA MIM, timm, this toolkit's, a fine-tuned MMSeg model),
which logs what it loaded, resized and skipped. It is applied by ``init_weights`` (training from a pre-trained
backbone); testing loads the whole segmentor instead.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from eva_transfer.adapter import build_vit_adapter
from eva_transfer_projects.mmengine_init import InitCfg, split_init_cfg

__all__ = ["EVAViTAdapter", "norm_layer_from_cfg"]


def _norm(cfg: dict, num_features: int) -> nn.Module:
    return build_norm_layer(cfg, num_features)[1]


def norm_layer_from_cfg(norm_cfg: dict):
    """``channels -> norm module`` for an mmcv norm config (``BN``, ``GN`` with ``num_groups``, ``SyncBN``, ...)."""
    if "type" not in norm_cfg:
        raise ValueError(f"norm_cfg needs a 'type' (BN, GN, SyncBN, ...), got {norm_cfg!r}")
    return functools.partial(_norm, dict(norm_cfg))


@MODELS.register_module()
class EVAViTAdapter(BaseModule):
    """EVA ViT + ViT-Adapter; ``forward(x (B, 3, H, W))`` returns four maps ``(B, C, H/4, W/4)`` ..
    ``(B, C, H/32, W/32)``, ``C`` the ViT width (``embed_dim``).

    Args:
        preset: an ``eva_transfer`` preset name (``eva_g_seg``, ``eva_l_seg``, ``eva_b_seg``, ``eva_tiny_seg``).
        backbone_overrides: EVAViT arguments replacing the preset's (``drop_path_rate``, ``img_size``, ...).
        adapter: :class:`eva_transfer.adapter.ViTAdapter` arguments.
        norm_cfg: normalisation of the adapter's feature maps and spatial prior module.
        out_indices: which of the four maps to return.
        init_cfg: ``dict(type="Pretrained", checkpoint=path, prefix=None)`` (backbone weights, loaded by
            ``init_weights``) and/or mmengine initialisers.
    """

    def __init__(
        self,
        preset: str = "eva_g_seg",
        backbone_overrides: Optional[dict] = None,
        adapter: Optional[dict] = None,
        norm_cfg: Optional[dict] = None,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        init_cfg: InitCfg = None,
    ) -> None:
        self._pretrained, initialisers = split_init_cfg(init_cfg, "EVAViTAdapter")
        super().__init__(init_cfg=initialisers or None)
        adapter_args = dict(adapter or {})
        if "norm_layer" in adapter_args:
            raise ValueError(
                "set the adapter's normalisation with norm_cfg=dict(type=...), not adapter.norm_layer"
            )
        adapter_args["norm_layer"] = norm_layer_from_cfg(norm_cfg or dict(type="BN"))
        self.adapter = build_vit_adapter(preset, adapter=adapter_args, **dict(backbone_overrides or {}))
        self.out_indices = tuple(out_indices)
        if not set(self.out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f"out_indices must be a subset of (0, 1, 2, 3), got {out_indices!r}")

    @property
    def embed_dim(self) -> int:
        return self.adapter.backbone.embed_dim

    def init_weights(self) -> None:
        """mmengine's initialisers of ``init_cfg`` (and the children's own), then the ``Pretrained`` file."""
        super().init_weights()
        for entry in self._pretrained:
            entry.load_into(self.adapter)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = self.adapter(x)
        return tuple(feats[i] for i in self.out_indices)
