"""Layer-wise lr decay for mmengine's optimizer wrapper, built on :mod:`eva_transfer.lr_decay`.

Shared by the MMSegmentation and MMDetection plug-ins (each imports this module; neither imports the other). The
constructor is registered once, in mmengine's root ``OPTIM_WRAPPER_CONSTRUCTORS``, where both find it.

Config::

    optim_wrapper = dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=2.5e-5, weight_decay=0.05, betas=(0.9, 0.999)),
        constructor="LayerDecayOptimWrapperConstructor",
        paramwise_cfg=dict(layer_decay_rate=0.95, scheme="eva"),
    )

The EVA ViT inside the segmentor (wherever it sits, e.g. ``backbone.adapter.backbone``) gets the decayed rates:
block ``i`` ``rate ** (depth - i)``, embeddings (patch, position, CLS and mask tokens) ``rate ** (depth + 1)``.
The adapter and the rest of the decode head get the full lr. ``scheme`` chooses the rest:

- ``"eva"`` (default; the authors' ``LayerDecayOptimizerConstructor`` in ``EVA-01/seg/mmcv_custom`` and upstream
  ViT-Adapter's): the decode head's ``cls_embed``, ``mask_embed``, ``query_embed``, ``query_feat`` and
  ``level_embed`` join the embeddings in layer 0 (``rate ** (depth + 1)``, 0.95^41 = 0.122 for EVA-g). Weight
  decay applies to every parameter with two or more dimensions that is not a bias: 2-D embeddings, position
  embeddings, CLS token and relative-position tables included.
- ``"head_full_lr"`` (this toolkit's earlier choice): those decode-head parameters stay at the full lr, and
  weight decay skips 1-D parameters, position embeddings, CLS/mask tokens, relative-position tables and names
  matching ``no_decay_names`` (by default the decode head's query and level embeddings).
"""

from __future__ import annotations

import logging
from typing import Optional

from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
from torch import nn

from eva_transfer.lr_decay import param_groups_layer_decay

__all__ = [
    "LayerDecayOptimWrapperConstructor",
    "DEFAULT_NO_DECAY_NAMES",
    "EVA_HEAD_LAYER0_NAMES",
    "SCHEMES",
    "param_groups_eva",
]

logger = logging.getLogger(__name__)

#: regular expressions of 2-D embeddings kept free of weight decay (scheme "head_full_lr")
DEFAULT_NO_DECAY_NAMES = (r"query_embed", r"query_feat", r"level_embed")

#: decode-head parameters the authors' constructor puts in layer 0 (scheme "eva")
EVA_HEAD_LAYER0_NAMES = (
    r"^decode_head\.mask_embed\.",
    r"^decode_head\.cls_embed\.",
    r"^decode_head\.level_embed\.",
    r"^decode_head\.query_embed\.",
    r"^decode_head\.query_feat\.",
)

SCHEMES = ("eva", "head_full_lr")

_KNOWN_KEYS = {"layer_decay_rate", "no_decay_names", "scheme", "layer0_names"}


def _bias_or_1d(name: str, param: nn.Parameter) -> bool:
    """The authors' segmentation rule: no weight decay for 1-D parameters and biases, decay for everything else."""
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups_eva(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    decay_rate: float,
    layer0_names: tuple[str, ...] = EVA_HEAD_LAYER0_NAMES,
) -> list[dict]:
    """Parameter groups as the authors' segmentation constructor forms them, through
    :func:`eva_transfer.lr_decay.param_groups_layer_decay`.

    Layer ids: the ViT's embeddings and parameters matching ``layer0_names`` (regexes on full names) are 0, ViT
    block ``i`` is ``i + 1``, everything else ``depth + 1``; lr scale ``rate ** (depth + 1 - layer)``. No weight
    decay only for 1-D parameters and biases. Each group holds ``params``, ``param_names``, ``lr``, ``lr_scale``,
    ``weight_decay`` and ``layer_id``; frozen parameters are left out.
    """
    return param_groups_layer_decay(
        model,
        base_lr,
        weight_decay,
        decay_rate,
        layer_id_rules=[(pattern, 0) for pattern in layer0_names],
        no_decay_fn=_bias_or_1d,
    )


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor:
    """Builds an optimizer wrapper whose parameter groups follow layer-wise lr decay.

    Args:
        optim_wrapper_cfg: ``dict(type=..., optimizer=dict(type=..., lr=..., weight_decay=...), ...)``.
        paramwise_cfg: ``layer_decay_rate`` (required); ``scheme`` (``"eva"``, the default, or
            ``"head_full_lr"``); ``layer0_names`` (regexes, replacing :data:`EVA_HEAD_LAYER0_NAMES`, scheme
            ``"eva"``); ``no_decay_names`` (regexes, replacing :data:`DEFAULT_NO_DECAY_NAMES`, scheme
            ``"head_full_lr"``).
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
        self.scheme = paramwise_cfg.get("scheme", "eva")
        if self.scheme not in SCHEMES:
            raise ValueError(
                f"optim_wrapper.paramwise_cfg.scheme is {self.scheme!r}; expected one of {list(SCHEMES)}"
            )
        if self.scheme == "eva" and "no_decay_names" in paramwise_cfg:
            raise ValueError(
                "optim_wrapper.paramwise_cfg.no_decay_names applies to scheme 'head_full_lr' only; "
                "scheme 'eva' decays every parameter with two or more dimensions"
            )
        if self.scheme == "head_full_lr" and "layer0_names" in paramwise_cfg:
            raise ValueError("optim_wrapper.paramwise_cfg.layer0_names applies to scheme 'eva' only")
        self.optim_wrapper_cfg = dict(optim_wrapper_cfg)
        self.optimizer_cfg = dict(self.optim_wrapper_cfg.pop("optimizer"))
        self.decay_rate = float(paramwise_cfg["layer_decay_rate"])
        self.no_decay_names = tuple(paramwise_cfg.get("no_decay_names", DEFAULT_NO_DECAY_NAMES))
        self.layer0_names = tuple(paramwise_cfg.get("layer0_names", EVA_HEAD_LAYER0_NAMES))

    def param_groups(self, model: nn.Module) -> list[dict]:
        """The optimizer's parameter groups (each with ``lr``, ``lr_scale``, ``weight_decay``, ``layer_id``)."""
        common = dict(
            base_lr=self.optimizer_cfg["lr"],
            weight_decay=self.optimizer_cfg.get("weight_decay", 0.0),
            decay_rate=self.decay_rate,
        )
        if self.scheme == "eva":
            groups = param_groups_eva(model, layer0_names=self.layer0_names, **common)
        else:
            groups = param_groups_layer_decay(model, no_decay_patterns=self.no_decay_names, **common)
        logger.info(
            "layer decay (scheme %s, rate %s): %d parameter groups", self.scheme, self.decay_rate, len(groups)
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
