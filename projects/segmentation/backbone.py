"""The EVA ViT-Adapter as an MMSegmentation backbone.

Config::

    backbone=dict(
        type="EVAViTAdapter",
        backbone="eva_g_seg",                       # an eva_transfer preset
        backbone_overrides=dict(drop_path_rate=0.5, use_act_checkpoint=True),
        adapter=dict(conv_inplane=64, deform_num_heads=16, n_points=4, deform_ratio=0.5, cffn_ratio=0.25),
        norm_cfg=dict(type="BN"),                   # or GN; SyncBN via the runner's ``sync_bn`` when distributed
        init_checkpoint="path/to/eva_or_mmseg_checkpoint.pth",
    )

``init_checkpoint`` is loaded into the EVA ViT by :func:`eva_transfer.load_checkpoint` (any format it reads:
EVA MIM, timm, this toolkit's, a fine-tuned MMSeg model), which logs what it loaded, resized and skipped. It is
loaded by ``init_weights`` (training from a pre-trained backbone); testing loads the whole segmentor instead.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

from mmcv.cnn import build_norm_layer
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from eva_transfer.adapter import build_vit_adapter
from eva_transfer.convert import load_checkpoint

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
        backbone: an ``eva_transfer`` preset name (``eva_g_seg``, ``eva_l_seg``, ``eva_b_seg``, ``eva_tiny_seg``).
        backbone_overrides: EVAViT arguments replacing the preset's (``drop_path_rate``, ``img_size``, ...).
        adapter: :class:`eva_transfer.adapter.ViTAdapter` arguments.
        norm_cfg: normalisation of the adapter's feature maps and spatial prior module.
        init_checkpoint: backbone weights loaded by ``init_weights``.
        out_indices: which of the four maps to return.
    """

    def __init__(
        self,
        backbone: str = "eva_g_seg",
        backbone_overrides: Optional[dict] = None,
        adapter: Optional[dict] = None,
        norm_cfg: Optional[dict] = None,
        init_checkpoint: Optional[str] = None,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        init_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        adapter_args = dict(adapter or {})
        if "norm_layer" in adapter_args:
            raise ValueError(
                "set the adapter's normalisation with norm_cfg=dict(type=...), not adapter.norm_layer"
            )
        adapter_args["norm_layer"] = norm_layer_from_cfg(norm_cfg or dict(type="BN"))
        self.adapter = build_vit_adapter(backbone, adapter=adapter_args, **dict(backbone_overrides or {}))
        self.init_checkpoint = init_checkpoint
        self.out_indices = tuple(out_indices)
        if not set(self.out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f"out_indices must be a subset of (0, 1, 2, 3), got {out_indices!r}")

    @property
    def embed_dim(self) -> int:
        return self.adapter.backbone.embed_dim

    def init_weights(self) -> None:
        super().init_weights()
        if self.init_checkpoint:
            report = load_checkpoint(self.adapter, self.init_checkpoint, verbose=False)
            print_log(
                f"EVAViTAdapter: backbone weights from {self.init_checkpoint}\n{report}", logger="current"
            )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = self.adapter(x)
        return tuple(feats[i] for i in self.out_indices)
