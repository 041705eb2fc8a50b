"""``init_cfg`` of the EVA backbones in the MMDetection and MMSegmentation plug-ins.

Both follow mmengine's convention::

    init_cfg=dict(type="Pretrained", checkpoint="eva_psz14.pt", prefix=None)   # and/or mmengine initialisers

``Pretrained`` entries are read by :func:`eva_transfer.load_checkpoint` instead of mmengine's loader: it reads
every layout the toolkit reads (EVA MIM, timm, Detectron2, MMDetection, MMSegmentation), resizes the patch kernel,
position grid and relative-position tables, and reports what it did. ``map_location`` is accepted and unused
(files are read on the CPU). Any other entry (``Normal``, ``Kaiming``, ...) is mmengine's initialiser.
"""

from __future__ import annotations

from typing import Union

from mmengine.logging import print_log
from torch import nn

from eva_transfer.convert import load_checkpoint

__all__ = ["PretrainedInit", "split_init_cfg"]

_PRETRAINED_KEYS = {"type", "checkpoint", "prefix", "map_location"}

InitCfg = Union[dict, list, None]


class PretrainedInit:
    """One ``dict(type="Pretrained", ...)`` entry, checked when the backbone is built."""

    def __init__(self, cfg: dict, owner: str) -> None:
        unknown = set(cfg) - _PRETRAINED_KEYS
        if unknown or "checkpoint" not in cfg:
            raise ValueError(
                f"{owner}.init_cfg Pretrained takes 'checkpoint' (required) and 'prefix', got keys {sorted(cfg)}"
            )
        self.checkpoint = cfg["checkpoint"]
        self.prefix = cfg.get("prefix")
        self.owner = owner

    def load_into(self, model: nn.Module) -> None:
        report = load_checkpoint(model, self.checkpoint, prefix=self.prefix, verbose=False)
        print_log(f"{self.owner}: weights from {self.checkpoint}\n{report.summary()}", logger="current")


def split_init_cfg(init_cfg: InitCfg, owner: str) -> tuple[list[PretrainedInit], list[dict]]:
    """``init_cfg`` (a dict, a list of dicts or None) as its ``Pretrained`` entries and mmengine's others."""
    cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg] if init_cfg else []
    pretrained, others = [], []
    for cfg in cfgs:
        if not isinstance(cfg, dict) or "type" not in cfg:
            raise ValueError(f"{owner}.init_cfg entries need a 'type', got {cfg!r}")
        if cfg["type"] == "Pretrained":
            pretrained.append(PretrainedInit(cfg, owner))
        else:
            others.append(dict(cfg))
    return pretrained, others
