"""Layer-wise lr decay for mmengine's optimizer wrapper, built on :mod:`eva_transfer.lr_decay`.

Config::

    optim_wrapper = dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=2.5e-5, weight_decay=0.05, betas=(0.9, 0.999)),
        constructor="LayerDecayOptimWrapperConstructor",
        paramwise_cfg=dict(layer_decay_rate=0.95),
    )

The EVA ViT inside the segmentor (wherever it sits, e.g. ``backbone.adapter.backbone``) gets the decayed rates:
block ``i`` ``rate ** (depth - i)``, embeddings ``rate ** (depth + 1)``. Everything else (adapter, pixel decoder,
queries, level embeddings) gets the full lr. No weight decay on 1-D parameters (norms, biases), position
embeddings, relative-position tables, nor on names matching ``no_decay_names`` (by default the decode head's
query and level embeddings, which are 2-D).
"""

from __future__ import annotations

from typing import Optional

from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
from torch import nn

from eva_transfer.lr_decay import param_groups_layer_decay

__all__ = ["LayerDecayOptimWrapperConstructor", "DEFAULT_NO_DECAY_NAMES"]

#: regular expressions of 2-D embeddings kept free of weight decay
DEFAULT_NO_DECAY_NAMES = (r"query_embed", r"query_feat", r"level_embed")

_KNOWN_KEYS = {"layer_decay_rate", "no_decay_names"}


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor:
    """Builds an optimizer wrapper whose parameter groups follow layer-wise lr decay.

    Args:
        optim_wrapper_cfg: ``dict(type=..., optimizer=dict(type=..., lr=..., weight_decay=...), ...)``.
        paramwise_cfg: ``layer_decay_rate`` (required) and ``no_decay_names`` (regexes, replacing the default).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        if "optimizer" not in optim_wrapper_cfg:
            raise ValueError("optim_wrapper needs an 'optimizer' entry for LayerDecayOptimWrapperConstructor")
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = set(paramwise_cfg) - _KNOWN_KEYS
        if unknown:
            raise ValueError(
                f"optim_wrapper.paramwise_cfg has unknown key(s) {sorted(unknown)}; "
                f"LayerDecayOptimWrapperConstructor understands {sorted(_KNOWN_KEYS)}"
            )
        if "layer_decay_rate" not in paramwise_cfg:
            raise ValueError("optim_wrapper.paramwise_cfg.layer_decay_rate is required (e.g. 0.95)")
        self.optim_wrapper_cfg = dict(optim_wrapper_cfg)
        self.optimizer_cfg = dict(self.optim_wrapper_cfg.pop("optimizer"))
        self.decay_rate = float(paramwise_cfg["layer_decay_rate"])
        self.no_decay_names = tuple(paramwise_cfg.get("no_decay_names", DEFAULT_NO_DECAY_NAMES))

    def param_groups(self, model: nn.Module) -> list[dict]:
        """The optimizer's parameter groups (each with ``lr``, ``lr_scale``, ``weight_decay``, ``layer_id``)."""
        groups = param_groups_layer_decay(
            model,
            base_lr=self.optimizer_cfg["lr"],
            weight_decay=self.optimizer_cfg.get("weight_decay", 0.0),
            decay_rate=self.decay_rate,
            no_decay_patterns=self.no_decay_names,
        )
        for g in groups:
            # names are for logging and tests; optimizers that validate group keys would reject them
            g["names"] = g.pop("param_names")
        return groups

    def __call__(self, model: nn.Module) -> OptimWrapper:
        if hasattr(model, "module"):  # DDP wrapper
            model = model.module
        optimizer_cfg = dict(self.optimizer_cfg, params=self.param_groups(model))
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))
