"""Layer-wise learning-rate decay for any model that contains the EVA ViT.

Layer ids: patch/position embeddings (and CLS/mask tokens) are layer 0, block ``i`` is layer ``i + 1``, and
every other parameter, of the backbone or of the task model around it (pyramid, heads, queries, level
embeddings), is layer ``depth + 1``. The lr scale of layer ``l`` is ``rate ** (depth + 1 - l)``: task-head
parameters get the full learning rate.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping, Optional

from torch import Tensor, nn

from .vit import EVAViT

__all__ = [
    "layer_id_for_name",
    "backbone_prefix",
    "no_weight_decay_names",
    "param_groups_layer_decay",
]

_EMBED = ("patch_embed", "pos_embed", "cls_token", "mask_token")


def layer_id_for_name(name: str, depth: int) -> int:
    """Layer id of a backbone-relative parameter name (``blocks.3.attn.qkv.weight`` -> 4)."""
    if name.startswith(_EMBED):
        return 0
    m = re.match(r"^blocks\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    return depth + 1


def backbone_prefix(model: nn.Module) -> tuple[str, EVAViT]:
    """Name prefix (with trailing dot, or empty) and module of the only EVA ViT inside ``model``."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, EVAViT)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one EVAViT inside {type(model).__name__}, found {len(found)}")
    name, vit = found[0]
    return (name + "." if name else ""), vit


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that ``model``'s modules list in their ``no_weight_decay()`` (the EVA ViT's
    position embedding, CLS/mask tokens and relative-position tables; the ViT-Adapter's level embedding)."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{module_name}.{n}" if module_name else n for n in listed()}
    return names


def _no_decay(name: str, param, skip: set[str], extra: Iterable[str]) -> bool:
    return param.ndim <= 1 or name in skip or any(re.search(p, name) for p in extra)


def param_groups_layer_decay(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    decay_rate: float,
    no_decay_patterns: Iterable[str] = (),
    depth: Optional[int] = None,
    weight_decay_scope: str = "standard",
    layer_id_rules: Mapping[str, int] | Iterable[tuple[str, int]] = (),
    no_decay_fn: Optional[Callable[[str, Tensor], bool]] = None,
) -> list[dict]:
    """Optimizer parameter groups with layer-wise lr decay and no weight decay on 1-D parameters and on the
    parameters the model's modules list in ``no_weight_decay()`` (:func:`no_weight_decay_names`: embeddings,
    relative-position tables), plus names matching ``no_decay_patterns`` (regular expressions).

    ``weight_decay_scope="all"`` decays every parameter instead (norms, biases, ``pos_embed``, ``rel_pos``): the
    EVA-01 detection configs reset Detectron2's ``weight_decay_norm`` and ``overrides``, which does that.

    ``layer_id_rules`` (``{regex: layer id}`` or ``(regex, layer id)`` pairs, first match wins) give parameters
    outside the ViT another layer id than ``depth + 1``: the authors' segmentation constructor puts the decode
    head's query and class/mask embeddings in layer 0. ``no_decay_fn(full name, parameter)`` replaces the
    no-weight-decay rule (and then ``no_decay_patterns`` / ``weight_decay_scope`` must stay at their defaults).

    Each group holds ``params``, ``lr`` (``base_lr * lr_scale``), ``lr_scale``, ``weight_decay``, ``layer_id`` and
    ``param_names``. Frozen parameters are left out.
    """
    if weight_decay_scope not in ("standard", "all"):
        raise ValueError(f"weight_decay_scope must be 'standard' or 'all', got {weight_decay_scope!r}")
    patterns = tuple(no_decay_patterns)
    if no_decay_fn is not None and (patterns or weight_decay_scope != "standard"):
        raise ValueError(
            "no_decay_fn replaces no_decay_patterns and weight_decay_scope: pass one or the other"
        )
    prefix, vit = backbone_prefix(model)
    depth = vit.depth if depth is None else depth
    rules = list(layer_id_rules.items() if isinstance(layer_id_rules, Mapping) else layer_id_rules)
    for pattern, layer_id in rules:
        if not isinstance(layer_id, int) or not 0 <= layer_id <= depth + 1:
            raise ValueError(
                f"layer_id_rules: layer id {layer_id!r} of {pattern!r} must be an integer in [0, {depth + 1}]"
            )
    skip = no_weight_decay_names(model) if no_decay_fn is None else set()
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith(prefix):
            layer = layer_id_for_name(name[len(prefix) :], depth)
        else:
            layer = next((i for pattern, i in rules if re.search(pattern, name)), depth + 1)
        if no_decay_fn is not None:
            no_wd = bool(no_decay_fn(name, p))
        else:
            no_wd = weight_decay_scope == "standard" and _no_decay(name, p, skip, patterns)
        g = groups.get((layer, no_wd))
        if g is None:
            scale = decay_rate ** (depth + 1 - layer)
            g = groups[(layer, no_wd)] = dict(
                params=[],
                param_names=[],
                lr=base_lr * scale,
                lr_scale=scale,
                weight_decay=0.0 if no_wd else weight_decay,
                layer_id=layer,
            )
        g["params"].append(p)
        g["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]
