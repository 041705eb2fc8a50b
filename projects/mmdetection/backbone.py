"""The EVA ViT as an MMDetection backbone.

Config::

    backbone=dict(
        type="EVAViTBackbone",
        preset="eva_g_det",                          # an eva_transfer preset
        img_size=1024, drop_path_rate=0.6,           # any EVAViT argument overrides the preset's
        use_act_checkpoint=True,
        init_cfg=dict(type="Pretrained", checkpoint="eva_psz14.pt"),
    )

The module *is* an :class:`eva_transfer.EVAViT` (its parameters sit directly under ``backbone.`` in the detector's
state dict), so one checkpoint layout serves this plug-in and the core. ``init_cfg`` follows mmdet's conventions
(:mod:`eva_transfer_projects.mmengine_init`: ``Pretrained`` through the toolkit's converter).
"""

from __future__ import annotations

from mmdet.registry import MODELS
from torch import Tensor

from eva_transfer.presets import preset_config
from eva_transfer.vit import EVAViT
from eva_transfer_projects.mmengine_init import InitCfg, split_init_cfg

__all__ = ["EVAViTBackbone"]


@MODELS.register_module()
class EVAViTBackbone(EVAViT):
    """EVA ViT for mmdet; ``forward(x (B, 3, H, W))`` returns ``(map,)``, one ``(B, C, H/16, W/16)`` map (mmdet's
    backbones return a tuple of levels; the neck makes the pyramid).

    Args:
        preset: an ``eva_transfer`` preset (``eva_g_det``, ``eva_l_det``, ``eva_b_det``, ``eva_tiny_det``, ...).
        init_cfg: ``dict(type="Pretrained", checkpoint=path, prefix=None)`` and/or mmengine initialisers.
        **overrides: :class:`EVAViT` arguments replacing the preset's.
    """

    def __init__(self, preset: str = "eva_g_det", init_cfg: InitCfg = None, **overrides) -> None:
        super().__init__(**preset_config(preset, **overrides))
        self.preset = preset
        self.init_cfg = init_cfg
        self._pretrained, self._initialisers = split_init_cfg(init_cfg, "EVAViTBackbone")
        self.is_init = False

    def init_weights(self) -> None:
        """Applies ``init_cfg``: mmengine's initialisers, then pre-trained weights through the toolkit's
        converter."""
        from mmengine.model import initialize

        for cfg in self._initialisers:
            initialize(self, cfg)
        for entry in self._pretrained:
            entry.load_into(self)
        self.is_init = True

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (super().forward(x),)
