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
state dict), so one checkpoint layout serves this plug-in and the core. ``init_cfg`` follows mmdet's conventions:
``dict(type="Pretrained", checkpoint=..., prefix=...)`` is loaded by :func:`eva_transfer.load_checkpoint`, which
reads every format the toolkit reads (EVA MIM, timm, Detectron2, MMDetection, MMSegmentation), resizes the patch
kernel, position grid and relative-position tables, and reports what it did (``map_location`` is accepted and
unused: files are read on the CPU); any other ``init_cfg`` entry is mmengine's initialiser (``Normal``, ...).
"""

from __future__ import annotations

from typing import Union

from mmdet.registry import MODELS
from mmengine.logging import print_log
from torch import Tensor

from eva_transfer.convert import load_checkpoint
from eva_transfer.presets import preset_config
from eva_transfer.vit import EVAViT

__all__ = ["EVAViTBackbone"]

_PRETRAINED_KEYS = {"type", "checkpoint", "prefix", "map_location"}


@MODELS.register_module()
class EVAViTBackbone(EVAViT):
    """EVA ViT for mmdet; ``forward(x (B, 3, H, W))`` returns ``(map,)``, one ``(B, C, H/16, W/16)`` map (mmdet's
    backbones return a tuple of levels; the neck makes the pyramid).

    Args:
        preset: an ``eva_transfer`` preset (``eva_g_det``, ``eva_l_det``, ``eva_b_det``, ``eva_tiny_det``, ...).
        init_cfg: ``dict(type="Pretrained", checkpoint=path, prefix=None)`` and/or mmengine initialisers.
        **overrides: :class:`EVAViT` arguments replacing the preset's.
    """

    def __init__(
        self, preset: str = "eva_g_det", init_cfg: Union[dict, list, None] = None, **overrides
    ) -> None:
        super().__init__(**preset_config(preset, **overrides))
        self.preset = preset
        self.init_cfg = init_cfg
        self.is_init = False

    def init_weights(self) -> None:
        """Applies ``init_cfg``: pre-trained weights through the toolkit's converter, other entries via mmengine."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        for cfg in cfgs:
            if not isinstance(cfg, dict) or "type" not in cfg:
                raise ValueError(f"EVAViTBackbone.init_cfg entries need a 'type', got {cfg!r}")
            if cfg["type"] == "Pretrained":
                unknown = set(cfg) - _PRETRAINED_KEYS
                if unknown or "checkpoint" not in cfg:
                    raise ValueError(
                        f"EVAViTBackbone.init_cfg Pretrained takes 'checkpoint' (required) and 'prefix', "
                        f"got keys {sorted(cfg)}"
                    )
                report = load_checkpoint(self, cfg["checkpoint"], prefix=cfg.get("prefix"), verbose=False)
                print_log(
                    f"EVAViTBackbone: weights from {cfg['checkpoint']}\n{report.summary()}", logger="current"
                )
            else:
                from mmengine.model import initialize

                initialize(self, cfg)
        self.is_init = True

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (super().forward(x),)
