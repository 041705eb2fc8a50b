"""Writing this toolkit's backbone weights in other libraries' layouts: the converter's other direction.

- :func:`export_state_dict`: timm's ``Eva`` or Detectron2's ViTDet ``ViT`` (:data:`EXPORT_LAYOUTS`); the matching
  models' arguments come from :func:`timm_eva_kwargs` / :func:`vitdet_vit_kwargs`.
- :func:`export_mmdet`: an MMDetection detector built on the ``eva_transfer_projects.mmdetection`` plug-in
  (``backbone.`` / ``neck.`` keys; the simple feature pyramid kept, :func:`extract_pyramid`, :func:`mmdet_layout`).
- :func:`convert_backbone_file`: the backbone of a checkpoint file in any of these layouts or this toolkit's own
  (what ``tools/convert_checkpoint.py`` runs).
"""

from __future__ import annotations

import math
import os
import re
from functools import partial
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .checkpoint_io import CheckpointError, read_checkpoint, unwrap_state_dict
from .convert import LoadReport, PathOrState, convert_state_dict, extract_backbone, find_backbone
from .resize import _has_cls_slot, resize_pos_embed
from .vit import EVAViT

__all__ = [
    "EXPORT_LAYOUTS",
    "convert_backbone_file",
    "export_mmdet",
    "export_state_dict",
    "extract_pyramid",
    "mmdet_layout",
    "timm_eva_kwargs",
    "vitdet_vit_kwargs",
]


# --- MMDetection layout -----------------------------------------------------------------------------------------

_PYRAMID_KEY = re.compile(r"^(?:.*\.)?(simfp_\d+\..+)$")


def extract_pyramid(state_dict: Mapping[str, Tensor], source: str = "<state dict>") -> dict[str, Tensor]:
    """The simple feature pyramid's weights (``simfp_*`` keys under any prefix: Detectron2's ``backbone.``,
    MMDetection's ``neck.``, none), with pyramid-relative names; empty if there is none."""
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        m = _PYRAMID_KEY.match(k)
        if m is None:
            continue
        if m.group(1) in out:
            raise CheckpointError(f"{source}: two feature pyramids in one checkpoint (second key {k!r})")
        out[m.group(1)] = v
    return out


def mmdet_layout(backbone: Mapping[str, Tensor], pyramid: Mapping[str, Tensor] = {}) -> dict[str, Tensor]:
    """Keys as in an MMDetection detector built on the ``eva_transfer_projects.mmdetection`` plug-in: ``backbone.<ViT key>``
    and ``neck.simfp_*``."""
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    out.update({f"neck.{k}": v for k, v in pyramid.items()})
    return out


def export_mmdet(
    state_dict: Mapping[str, Tensor],
    source: str = "<state dict>",
    prefix: Optional[str] = None,
    *,
    model: Optional[nn.Module] = None,
    patch_resize: str = "bicubic",
    rel_pos_resize: str = "linear",
    pos_resize: str = "eva",
) -> tuple[dict[str, Tensor], LoadReport]:
    """The backbone (and simple feature pyramid, if present) of any supported checkpoint in the MMDetection
    layout (``backbone.`` / ``neck.`` keys); detection heads of other frameworks are reported as unexpected.
    With ``model`` (an :class:`EVAViT` or a module holding one; the meta device works) the backbone is first
    converted and resized for it by :func:`convert_state_dict`."""
    if model is None:
        sd, report = extract_backbone(state_dict, source, prefix)
    else:
        sd, report = convert_state_dict(
            state_dict, model, source, prefix, patch_resize, rel_pos_resize, pos_resize=pos_resize
        )
    pyramid = extract_pyramid(state_dict, source)
    report.unexpected = [k for k in report.unexpected if not _PYRAMID_KEY.match(k)]
    out = mmdet_layout(sd, pyramid)
    report.loaded = list(out)
    return out, report


# --------------------------------------------------------------------------------------------------- export
#: layouts :func:`export_state_dict` writes, with their default key prefix
EXPORT_LAYOUTS = {"timm": "", "detectron2": "backbone.net."}


def export_state_dict(
    source: Union[nn.Module, PathOrState],
    layout: str,
    *,
    prefix: Optional[str] = None,
    strict: bool = True,
    allow_pickle: bool = False,
) -> tuple[dict[str, Tensor], LoadReport]:
    """Writes this toolkit's backbone in another library's layout: the converter's other direction.

    Args:
        source: an :class:`EVAViT` or a module holding one (a detector, a segmentor), or a checkpoint path or
            state dict in any layout :func:`load_checkpoint` reads (a fine-tuned detector's ``model_final.pth``).
        layout: ``"timm"`` (timm's ``Eva``: fused ``qkv.weight``, ``q_bias``, ``v_bias``; a backbone without a final norm becomes ``Eva(use_fc_norm=True)``, whose pooled head
            output then passes a unit ``fc_norm``; the position table with a CLS slot exactly when there is a CLS token) or ``"detectron2"`` (ViTDet's
            ``ViT``: one ``qkv.bias`` with a zero key part; no CLS token, no final norm).
        prefix: prefix of the written keys; default ``""`` for timm, ``"backbone.net."`` for Detectron2.
        strict: refuse (:class:`CheckpointError`) weights the target cannot represent without changing the
            outputs: relative-position tables or windowed attention for timm's ``Eva``; a CLS token or a final
            norm for Detectron2's ``ViT``. ``strict=False`` drops them and lists them in the report.
    Returns:
        The state dict and a :class:`LoadReport` (``renamed`` and ``dropped`` say what changed).

    The matching model's arguments come from :func:`timm_eva_kwargs` / :func:`vitdet_vit_kwargs`.
    """
    if layout not in EXPORT_LAYOUTS:
        raise ValueError(f"unknown export layout {layout!r} (expected one of {sorted(EXPORT_LAYOUTS)})")
    prefix = EXPORT_LAYOUTS[layout] if prefix is None else prefix
    vit, sd, report = _export_source(source, allow_pickle)
    out, refuse = _export_entries(sd, layout, report)
    if (
        vit is not None
        and layout == "timm"
        and vit.window_size > 0
        and len(vit.global_block_indexes) < vit.depth
    ):
        refuse["(windowed attention)"] = "timm's Eva attends globally in every block"
    if vit is not None and layout == "detectron2" and vit.rope_grid is not None:
        refuse["(rotary position)"] = "Detectron2's ViT has no rotary position embedding"
    if layout == "timm":
        _fit_timm_eva(out, "cls_token" in sd, report)
    if refuse:
        if strict:
            raise CheckpointError(
                f"{report.source}: the {layout} layout cannot represent "
                + "; ".join(f"{k} ({why})" for k, why in refuse.items())
                + ". Pass strict=False (command line: --lossy) to drop them; the outputs will then differ."
            )
        report.dropped.update({k: f"{why} (lossy export)" for k, why in refuse.items()})
    report.prefix = prefix
    report.loaded = list(out)
    return {prefix + k: v for k, v in out.items()}, report


def _export_source(
    source: Union[nn.Module, PathOrState], allow_pickle: bool
) -> tuple[Optional[EVAViT], dict[str, Tensor], LoadReport]:
    """The backbone's weights in this toolkit's layout: from a model (with its :class:`EVAViT`) or a checkpoint
    (path or state dict; no model then)."""
    if isinstance(source, nn.Module):
        vit = find_backbone(source)
        return vit, dict(vit.state_dict()), LoadReport(source=type(source).__name__)
    if isinstance(source, Mapping):
        name, obj = "<state dict>", source
    else:
        name, obj = str(source), read_checkpoint(source, allow_pickle=allow_pickle)
    sd, report = extract_backbone(unwrap_state_dict(obj, name), name)
    return None, sd, report


def _export_entries(
    sd: dict[str, Tensor], layout: str, report: LoadReport
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The entries renamed for ``layout`` (Detectron2: one ``qkv.bias`` with a zero key part), and those the
    layout cannot represent, each with the reason."""
    refuse: dict[str, str] = {}
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k == "mask_token":
            report.dropped[k] = "masked-image-modelling token; not part of the backbone's forward"
            continue
        if layout == "timm" and re.search(r"attn\.rel_pos_[hw]$", k):
            refuse[k] = "timm's Eva has no decomposed relative position"
            continue
        if layout == "detectron2" and k == "cls_token":
            refuse[k] = "Detectron2's ViT has no CLS token"
            continue
        if layout == "detectron2" and k.startswith("norm."):
            refuse[k] = "Detectron2's ViT has no final norm"
            continue
        if layout == "detectron2" and re.search(r"\.mlp\.(fc1_[gx]|norm)\.|\.attn\.norm\.", k):
            refuse[k] = "Detectron2's ViT has a GELU MLP and no sub-LN"
            continue
        m = re.match(r"^(blocks\.\d+\.mlp\.)fc1_([gx])\.(weight|bias)$", k)
        if m and layout == "timm" and m.group(1) + "norm.weight" not in sd:
            # timm's Eva packs a SwiGLU without sub-LN into one fc1 (GluMlp), the gate half first
            if m.group(2) == "g":
                out[f"{m.group(1)}fc1.{m.group(3)}"] = torch.cat([v, sd[f"{m.group(1)}fc1_x.{m.group(3)}"]])
                report.renamed[f"{m.group(1)}fc1_{{g,x}}.{m.group(3)}"] = (
                    f"{m.group(1)}fc1.{m.group(3)} (packed)"
                )
            continue
        m = re.match(r"^(blocks\.\d+\.attn\.)(q|v)_bias$", k)
        if m and layout == "detectron2":
            if m.group(2) == "q":
                v_bias = sd[m.group(1) + "v_bias"]
                out[m.group(1) + "qkv.bias"] = torch.cat([v, torch.zeros_like(v), v_bias])
                report.renamed[m.group(1) + "{q,v}_bias"] = m.group(1) + "qkv.bias (zero key part)"
            continue
        out[k] = v  # timm's Eva: the same names (its zero key bias is a non-persistent buffer)
    return out, refuse


def _fit_timm_eva(out: dict[str, Tensor], has_cls: bool, report: LoadReport) -> None:
    """timm's ``Eva``: a position table with a CLS slot exactly when there is a CLS token; a backbone without a
    final norm gets a unit ``fc_norm`` (``Eva(use_fc_norm=True)``, the norm only in its head)."""
    pos = out.get("pos_embed")
    if pos is not None and _has_cls_slot(pos.shape[1]) != has_cls:
        g = int(round(math.sqrt(pos.shape[1] - int(_has_cls_slot(pos.shape[1])))))
        out["pos_embed"] = resize_pos_embed(pos, (g, g), cls_slot=has_cls)
        report.renamed["pos_embed"] = "pos_embed (CLS slot " + ("added, zeros)" if has_cls else "dropped)")
    if "norm.weight" not in out:
        ref = out["patch_embed.proj.weight"]
        out["fc_norm.weight"], out["fc_norm.bias"] = ref.new_ones(ref.shape[0]), ref.new_zeros(ref.shape[0])
        report.renamed["fc_norm.{weight,bias}"] = "unit head norm (the backbone has no final norm)"


def _mlp_ratio(vit: EVAViT) -> float:
    """The ratio that timm and Detectron2 turn back into the MLP's hidden width (``int(embed_dim * ratio)``)."""
    mlp = vit.blocks[0].mlp
    hidden = (mlp.fc1_g if hasattr(mlp, "fc1_g") else mlp.fc1).out_features
    for ratio in (hidden / vit.embed_dim, (hidden + 0.25) / vit.embed_dim):  # the second when rounding bites
        if int(vit.embed_dim * ratio) == hidden:
            return ratio
    raise ValueError(f"MLP width {hidden} is not expressible as a ratio of the width {vit.embed_dim}")


def _eva02_kwargs(vit: EVAViT) -> dict[str, Any]:
    """timm ``Eva`` arguments of EVA-02's block options: SwiGLU, sub-LN in the MLP and in attention, rotary
    position rescaled to ``rope_grid``."""
    block = vit.blocks[0]
    out: dict[str, Any] = {}
    if hasattr(block.mlp, "fc1_g"):
        out["swiglu_mlp"] = True
    if isinstance(
        getattr(block.mlp, "norm", None), nn.LayerNorm
    ):  # timm's SwiGLU holds an identity otherwise
        out["scale_mlp"] = True
    if isinstance(block.attn.norm, nn.LayerNorm):
        out["scale_attn_inner"] = True
    if vit.rope_grid is not None:
        out.update(use_rot_pos_emb=True, ref_feat_shape=tuple(vit.rope_grid))
    return out


def _transformer_shape(vit: EVAViT) -> dict[str, Any]:
    """The arguments timm's ``Eva`` and Detectron2's ``ViT`` share: patch, input channels, width, depth, heads and
    MLP ratio."""
    return dict(
        patch_size=vit.patch_size,
        in_chans=vit.patch_embed.proj.in_channels,
        embed_dim=vit.embed_dim,
        depth=vit.depth,
        num_heads=vit.num_heads,
        mlp_ratio=_mlp_ratio(vit),
    )


def timm_eva_kwargs(vit: EVAViT) -> dict[str, Any]:
    """Arguments of ``timm.models.eva.Eva`` matching ``vit`` for weights from ``export_state_dict(vit, "timm")``
    (``forward_features`` then equals ``vit.forward_features`` at the position grid's input size)."""
    vit = find_backbone(vit)
    return dict(
        img_size=tuple(g * vit.patch_size for g in vit.pos_grid),
        **_transformer_shape(vit),
        qkv_fused=True,
        class_token=vit.cls_token is not None,
        num_classes=0,
        global_pool="token" if vit.cls_token is not None else "avg",
        use_fc_norm=isinstance(vit.norm, nn.Identity),  # no final norm: timm's norm is then an identity
        norm_layer=partial(nn.LayerNorm, eps=vit.blocks[0].norm1.eps),
        **_eva02_kwargs(vit),
    )


def vitdet_vit_kwargs(vit: EVAViT) -> dict[str, Any]:
    """Arguments of Detectron2's ``detectron2.modeling.ViT`` matching ``vit`` for weights from
    ``export_state_dict(vit, "detectron2", prefix="")`` (its ``"last_feat"`` output equals ``vit(x)``)."""
    vit = find_backbone(vit)
    windowed = [i for i in range(vit.depth) if i not in vit.global_block_indexes] if vit.window_size else []
    return dict(
        img_size=vit.img_size[0],
        **_transformer_shape(vit),
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=vit.blocks[0].norm1.eps),
        window_size=vit.window_size,
        window_block_indexes=windowed,
        use_rel_pos=vit.blocks[0].attn.use_rel_pos,
        use_abs_pos=vit.pos_embed is not None,
        pretrain_img_size=vit.pos_grid[0] * vit.patch_size if vit.pos_grid else 224,
        pretrain_use_cls_token=vit.pos_cls_slot,
        use_act_checkpoint=vit.use_act_checkpoint,
        out_feature="last_feat",
    )


def convert_backbone_file(
    path: str | os.PathLike,
    *,
    model: Optional[nn.Module] = None,
    layout: str = "eva",
    key: Optional[str] = None,
    prefix: Optional[str] = None,
    output_prefix: Optional[str] = None,
    patch_resize: str = "bicubic",
    rel_pos_resize: str = "linear",
    strict: bool = True,
    allow_pickle: bool = False,
    pos_resize: str = "eva",
) -> tuple[dict[str, Tensor], list[LoadReport]]:
    """The backbone of the checkpoint file ``path`` (any layout :func:`load_checkpoint` reads) in ``layout``:
    ``"eva"`` (this toolkit's), ``"mmdet"`` (:func:`export_mmdet`: the pyramid kept if the file has one) or one
    of :data:`EXPORT_LAYOUTS` (:func:`export_state_dict`; ``strict=False`` drops what the target cannot
    represent). With ``model`` (the meta device works) the backbone is converted and resized for it first;
    without, it is only extracted.

    Returns the state dict with ``output_prefix`` on every key (default ``""``; the layout's own prefix for
    :data:`EXPORT_LAYOUTS`) and the reports in the order the steps ran (extraction or conversion, then export).
    This is ``tools/convert_checkpoint.py`` without its printing and saving."""
    source = str(path)
    sd = unwrap_state_dict(read_checkpoint(path, allow_pickle=allow_pickle), source, key)
    if layout == "mmdet":
        if output_prefix:
            raise CheckpointError(
                f"output_prefix {output_prefix!r}: the mmdet layout has its own key prefixes (backbone. / neck.); "
                "--output-prefix and --to mmdet exclude each other"
            )
        out, report = export_mmdet(
            sd,
            source,
            prefix,
            model=model,
            patch_resize=patch_resize,
            rel_pos_resize=rel_pos_resize,
            pos_resize=pos_resize,
        )
        return {k: v.contiguous() for k, v in out.items()}, [report]
    if layout != "eva" and layout not in EXPORT_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected eva, mmdet or one of {sorted(EXPORT_LAYOUTS)}")
    if model is not None:
        out, report = convert_state_dict(
            sd, model, source, prefix, patch_resize, rel_pos_resize, pos_resize=pos_resize
        )
    else:
        out, report = extract_backbone(sd, source, prefix)
        report.loaded = list(out)
    reports = [report]
    if layout != "eva":
        out, report = export_state_dict(out, layout, prefix="", strict=strict)
        report.source = f"{source} -> {layout} layout"
        reports.append(report)
    head = output_prefix if output_prefix is not None else EXPORT_LAYOUTS.get(layout, "")
    return {head + k: v.contiguous() for k, v in out.items()}, reports
