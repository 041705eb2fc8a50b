"""Converting checkpoints into the EVA ViT and loading them; one converter for every format and task.

Files are read by :mod:`eva_transfer.checkpoint_io`, tables and kernels resized by :mod:`eva_transfer.resize`;
the other direction, this toolkit's weights in other libraries' layouts, is :mod:`eva_transfer.export`.

Formats understood:
  - EVA MIM checkpoints (``{"model": {...}}`` with ``mask_token``, ``lm_head``, patch 14, 16x16 position grid);
  - timm EVA weights (``k_bias`` buffer, optional separate ``q_proj/k_proj/v_proj``), also wrapped in
    ``state_dict`` / ``model`` / ``model_ema`` / ``module.`` / ``_orig_mod.``; EVA-02's SwiGLU MLP in timm's
    layouts (``fc1_g/fc1_x/norm/fc2``, or one packed ``fc1`` with the gate half first) and the authors'
    (``w1/w2/ffn_ln/w3``, packed ``w12``), its attention norm (``attn.norm``, the authors' ``inner_attn_ln``);
    rotary tables (``rope.*``) are recomputed, not loaded;
  - Detectron2 ViT weights (one ``qkv.bias`` vector) and fine-tuned Detectron2 / MMSegmentation checkpoints, from
    which the backbone is extracted (its prefix, such as ``backbone.net.``, is found from the block keys);
  - this toolkit's own pre-training output.

Steps: unwrap, find and strip the backbone prefix, rename, drop pre-training-only keys (``mask_token``, ``lm_head``,
classification heads) when the model has no use for them, resize the patch kernel, interpolate the absolute position
grid, resize relative-position tables. A key that is present in both but cannot be converted raises
:class:`CheckpointError` naming the file and key; so does a checkpoint of another depth.

The key bias of BEiT-style attention is dropped: adding the same vector to every key adds a per-query constant
to the logits, which softmax ignores, so the outputs do not change.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .checkpoint_io import CheckpointError, read_checkpoint, unwrap_state_dict
from .lr_decay import backbone_prefix
from .resize import (
    _pos_resize_via,
    resize_patch_kernel,
    resize_pos_embed,
    resize_rel_pos,
    resize_rel_pos_bias_table,
)
from .vit import EVAViT

logger = logging.getLogger(__name__)

__all__ = [
    "LoadReport",
    "check_tensor",
    "convert_state_dict",
    "extract_backbone",
    "find_backbone",
    "load_checkpoint",
]

PathOrState = Union[str, os.PathLike, Mapping[str, Any]]

#: keys of pre-training or classification heads (EVA MIM, MAE-style decoders, timm heads) that no backbone uses
_TRAINING_ONLY = re.compile(
    r"^(mask_token|lm_head\..*|head\..*|fc_norm\..*|norm\..*|cls_token|rope\..*|decoder_.*|encoder_to_decoder\..*)$"
)


@dataclass
class LoadReport:
    """What a load did. ``resized`` maps a key to ``(from_shape, to_shape, method)``."""

    source: str
    prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...], str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        def block(title: str, items) -> list[str]:
            items = list(items)
            return [f"  {title} ({len(items)}):"] + [f"    {i}" for i in _compress(items)] if items else []

        lines = [f"checkpoint {self.source}" + (f" (backbone prefix '{self.prefix}')" if self.prefix else "")]
        lines.append(f"  loaded: {len(self.loaded)} tensors")
        lines += block(
            "resized", [f"{k}: {list(a)} -> {list(b)} ({m})" for k, (a, b, m) in self.resized.items()]
        )
        lines += block("renamed", [f"{a} -> {b}" for a, b in self.renamed.items()])
        lines += block("dropped", [f"{k} ({why})" for k, why in self.dropped.items()])
        lines += block("missing (left at their initial values)", self.missing)
        lines += block("unexpected (not used by the model)", self.unexpected)
        return "\n".join(lines)

    __str__ = summary


def _compress(keys: list[str]) -> list[str]:
    """Folds ``blocks.{i}.x`` runs into ``blocks.{0..N}.x`` for readable reports."""
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    for k in keys:
        m = re.match(r"^(.*?blocks\.)(\d+)(\..*)$", k.split(":")[0])
        if m and ":" not in k:
            pat = m.group(1) + "{}" + m.group(3)
            if pat not in groups:
                groups[pat] = []
                order.append(pat)
            groups[pat].append(int(m.group(2)))
        else:
            order.append(k)
    out = []
    for k in order:
        if k in groups:
            idx = sorted(groups[k])
            rng = (
                str(idx[0])
                if len(idx) == 1
                else f"{{{idx[0]}..{idx[-1]}}}"
                if idx == list(range(idx[0], idx[-1] + 1))
                else "{" + ",".join(map(str, idx)) + "}"
            )
            out.append(k.replace("{}", rng))
        else:
            out.append(k)
    return out


# ------------------------------------------------------------------------------------------------ conversion
def find_backbone(model: nn.Module) -> EVAViT:
    """The EVA ViT inside ``model`` (``model`` itself, or its only :class:`EVAViT` submodule); the search is
    :func:`eva_transfer.lr_decay.backbone_prefix`'s."""
    return backbone_prefix(model)[1]


def _find_prefix(sd: Mapping[str, Tensor], source: str) -> str:
    """The prefix under which the ViT's blocks live (``''``, ``backbone.net.``, ``visual.``, ...)."""
    prefixes = {k[: k.index("blocks.0.")] for k in sd if re.search(r"(^|\.)blocks\.0\.", k)}
    if not prefixes:
        raise CheckpointError(
            f"{source}: no ViT blocks found (expected keys like 'blocks.0.attn.qkv.weight', "
            f"first keys: {list(sd)[:5]})"
        )
    if len(prefixes) > 1:
        # nested modules that also have 'blocks' (a decoder, a teacher): the shortest prefix with a patch embed
        with_embed = [p for p in prefixes if f"{p}patch_embed.proj.weight" in sd]
        if len(with_embed) == 1:
            return with_embed[0]
        raise CheckpointError(
            f"{source}: several ViT block sets found under prefixes {sorted(prefixes)}; pass prefix= to choose"
        )
    return prefixes.pop()


#: EVA-02 authors' names inside a block -> this toolkit's (timm's SwiGLU names)
_EVA02_NAMES = {
    "mlp.w1": "mlp.fc1_g",
    "mlp.w2": "mlp.fc1_x",
    "mlp.w3": "mlp.fc2",
    "mlp.ffn_ln": "mlp.norm",
    "attn.inner_attn_ln": "attn.norm",
}


def _split_packed_glu(sd: Mapping[str, Tensor], k: str, v: Tensor) -> Optional[dict[str, Tensor]]:
    """``blocks.N.mlp.fc1.*`` (timm's packed GLU) or ``blocks.N.mlp.w12.*`` (the authors'): one projection holding
    the SwiGLU gate (first half) and value (second half), split into ``fc1_g`` / ``fc1_x``. A GELU ``fc1``
    (as wide as ``fc2``'s input) is not split: None."""
    m = re.match(r"^(blocks\.\d+\.mlp\.)(fc1|w12)\.(weight|bias)$", k)
    if not m:
        return None
    base, name, kind = m.groups()
    out_w = sd.get(base + "fc2.weight", sd.get(base + "w3.weight"))
    if name == "fc1" and (
        not isinstance(out_w, Tensor) or out_w.dim() != 2 or v.shape[0] != 2 * out_w.shape[1]
    ):
        return None
    gate, value = v.chunk(2, dim=0)
    return {f"{base}fc1_g.{kind}": gate, f"{base}fc1_x.{kind}": value}


def _rename(sd: dict[str, Tensor], report: LoadReport) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"^(blocks\.\d+\.)(mlp\.w[123]|mlp\.ffn_ln|attn\.inner_attn_ln)(\..*)$", k)
        if m:
            out[m.group(1) + _EVA02_NAMES[m.group(2)] + m.group(3)] = v
            report.renamed[k] = m.group(1) + _EVA02_NAMES[m.group(2)] + m.group(3)
            continue
        split = _split_packed_glu(sd, k, v) if isinstance(v, Tensor) else None
        if split is not None:
            out.update(split)
            report.renamed[k] = " + ".join(split) + " (packed SwiGLU: gate half, value half)"
            continue
        m = re.match(r"^(blocks\.\d+\.attn\.)(.*)$", k)
        if m:
            base, rest = m.groups()
            if rest == "k_bias":
                report.dropped[k] = "key bias: no effect on attention"
                continue
            if rest == "qkv.bias":  # Detectron2 / plain ViT layout: one bias for q, k and v
                c = v.shape[0] // 3
                out[base + "q_bias"], out[base + "v_bias"] = v[:c], v[2 * c :]
                report.renamed[k] = f"{base}q_bias + {base}v_bias (k part dropped: no effect on attention)"
                continue
            if rest in ("q_proj.weight", "k_proj.weight", "v_proj.weight"):
                continue  # fused below
            if rest in ("q_proj.bias", "v_proj.bias"):
                out[base + rest[0] + "_bias"] = v
                report.renamed[k] = base + rest[0] + "_bias"
                continue
            if rest == "k_proj.bias":
                report.dropped[k] = "key bias: no effect on attention"
                continue
        out[k] = v
    for k in list(sd):
        if k.endswith("attn.q_proj.weight"):
            base = k[: -len("q_proj.weight")]
            parts = [sd.get(base + f"{n}_proj.weight") for n in "qkv"]
            if any(p is None for p in parts):
                raise CheckpointError(f"{report.source}: {base}q_proj/k_proj/v_proj are not all present")
            out[base + "qkv.weight"] = torch.cat(parts, dim=0)
            report.renamed[base + "{q,k,v}_proj.weight"] = base + "qkv.weight"
    for k in out:
        # blocks.N.gamma_1/2 (BEiT LayerScale) load into a backbone built with layer_scale_init; other gates named
        # gamma (the adapter's injector) are not part of the ViT
        if k.startswith("blocks.") and (".ls1." in k or ".ls2." in k or re.search(r"\.gamma$", k)):
            raise CheckpointError(
                f"{report.source}: key {k!r} is a layer scale in a layout this toolkit does not read "
                "(expected blocks.N.gamma_1 / blocks.N.gamma_2)"
            )
    return out


def extract_backbone(
    state_dict: Mapping[str, Tensor], source: str = "<state dict>", prefix: Optional[str] = None
) -> tuple[dict[str, Tensor], LoadReport]:
    """The ViT's weights from any supported checkpoint (a fine-tuned detector or segmentor too), with
    backbone-relative names in this toolkit's layout, no resizing. Keys outside the backbone are reported as
    unexpected."""
    report = LoadReport(source=source)
    sd = dict(state_dict)
    report.prefix = _find_prefix(sd, source) if prefix is None else prefix
    if report.prefix:
        report.unexpected += [k for k in sd if not k.startswith(report.prefix)]
        sd = {k[len(report.prefix) :]: v for k, v in sd.items() if k.startswith(report.prefix)}
    return _rename(sd, report), report


def check_tensor(value: Any, want: Tensor, source: str, key: str, check_finite: bool = True) -> None:
    """Raises :class:`CheckpointError` naming ``source`` and ``key`` when a checkpoint entry cannot stand for the
    model's tensor ``want``: not a tensor, an integer or bool tensor for a floating-point one, or (with
    ``check_finite``) NaN or infinite values."""
    if not isinstance(value, Tensor):
        raise CheckpointError(f"{source}: key {key!r} is a {type(value).__name__}, expected a tensor")
    if want.is_floating_point() and not (value.is_floating_point() or value.is_complex()):
        raise CheckpointError(
            f"{source}: key {key!r} holds {value.dtype} values, the model expects a floating-point tensor "
            f"({want.dtype})"
        )
    if (
        check_finite
        and value.is_floating_point()
        and value.numel()
        and value.device.type != "meta"  # shapes only: nothing to check
        and not bool(torch.isfinite(value).all())
    ):
        bad = int((~torch.isfinite(value)).sum())
        raise CheckpointError(
            f"{source}: key {key!r} holds {bad} NaN or infinite values of {value.numel()} "
            f"(pass check_finite=False to load it anyway)"
        )


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    model: nn.Module,
    source: str = "<state dict>",
    prefix: Optional[str] = None,
    patch_resize: str = "bicubic",
    rel_pos_resize: str = "linear",
    check_finite: bool = True,
    pos_resize: str = "eva",
) -> tuple[dict[str, Tensor], LoadReport]:
    """Converts a backbone state dict to ``model``'s layout (``model``: an :class:`EVAViT` or a module holding one;
    a model on the meta device works, for shapes only). ``pos_resize``: the position table's route
    (:data:`POS_RESIZE`).

    Returns the converted dict (backbone-relative keys) and a report. Raises :class:`CheckpointError` for a
    checkpoint of another width or depth, any key whose shape cannot be converted, an integer or bool tensor for a
    floating-point parameter, and NaN or infinite values (unless ``check_finite=False``).
    """
    vit = find_backbone(model)
    sd, report = extract_backbone(state_dict, source, prefix)
    target = vit.state_dict()
    _check_depth(sd, vit.depth, source)
    pos_via = _pos_resize_via(sd, vit, pos_resize)
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k not in target:
            _sort_foreign_key(k, report, source)
            continue
        check_tensor(v, target[k], source, k, check_finite)
        have, want = tuple(v.shape), tuple(target[k].shape)
        if have == want and not (k == "pos_embed" and pos_via):
            out[k] = v
        else:
            out[k] = _resize_entry(k, v, want, vit, report, patch_resize, rel_pos_resize, pos_via)
        report.loaded.append(k)
    report.missing = [k for k in target if k not in out]
    if not out:
        raise CheckpointError(f"{source}: no key matches the backbone (first keys: {list(state_dict)[:5]})")
    return out, report


def _check_depth(sd: Mapping[str, Tensor], depth: int, source: str) -> None:
    """A checkpoint with blocks must have exactly ``depth`` of them, numbered from 0."""
    ckpt_blocks = {int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))}
    if ckpt_blocks and (max(ckpt_blocks) + 1 != depth or len(ckpt_blocks) != depth):
        raise CheckpointError(
            f"{source}: the checkpoint has {len(ckpt_blocks)} blocks (blocks.{min(ckpt_blocks)}.."
            f"blocks.{max(ckpt_blocks)}), the model expects depth {depth} "
            f"(first differing key: blocks.{depth if max(ckpt_blocks) >= depth else max(ckpt_blocks) + 1}.*)"
        )


def _sort_foreign_key(k: str, report: LoadReport, source: str) -> None:
    """A key the model does not have: dropped (a recomputed index, a training-only entry), unexpected, or an
    error when it is a layer scale / bias table of a backbone built without them."""
    if re.search(r"attn\.relative_position_index$", k):
        report.dropped[k] = "index buffer of the bias table, recomputed from the grid"
        return
    if re.match(r"^(rope|rope_win|rope_glb|blocks\.\d+\.attn\.rope)\.", k):
        report.dropped[k] = (
            "rotary position table: fixed, recomputed from the grid (a backbone built with rope=True)"
        )
        return
    if re.match(r"^blocks\.\d+\.(gamma_[12]|attn\.relative_position_bias_table)$", k):
        what = "a layer scale" if "gamma" in k else "a relative-position bias table"
        option = "layer_scale_init" if "gamma" in k else "use_rel_pos_bias=True"
        raise CheckpointError(
            f"{source}: key {k!r} is {what}, which this backbone was built without (build it with {option})"
        )
    if _TRAINING_ONLY.match(k):
        report.dropped[k] = "pre-training/classification only; the model has no such parameter"
    else:
        report.unexpected.append(k)


def _resize_entry(
    k: str,
    v: Tensor,
    want: tuple,
    vit: EVAViT,
    report: LoadReport,
    patch_resize: str,
    rel_pos_resize: str,
    pos_via: tuple[tuple[int, int], ...] = (),
) -> Tensor:
    """Entry ``k`` resized to the model's shape ``want`` (patch kernel, position grid through ``pos_via``,
    relative-position tables); a CheckpointError naming the key for shapes with no conversion."""
    have = tuple(v.shape)
    try:
        if k == "patch_embed.proj.weight" and have[:2] == want[:2]:
            resized, how = resize_patch_kernel(v, want[-2:], patch_resize), f"patch kernel, {patch_resize}"
        elif k == "pos_embed" and v.dim() == 3 and have[2] == want[2]:
            resized = resize_pos_embed(v, vit.pos_grid, vit.pos_cls_slot, via=pos_via)
            how = "position grid, bicubic" + "".join(f" via {h}x{w}" for h, w in pos_via)
        elif re.search(r"attn\.rel_pos_[hw]$", k) and v.dim() == 2 and have[1] == want[1]:
            resized, how = resize_rel_pos(v, want[0], rel_pos_resize), f"relative position, {rel_pos_resize}"
        elif k.endswith("attn.relative_position_bias_table") and v.dim() == 2 and have[1] == want[1]:
            g = (int(round(math.sqrt(have[0] - 3))) + 1) // 2
            if (2 * g - 1) ** 2 + 3 != have[0]:
                raise ValueError("not a square grid's table with 3 CLS rows")
            dst = vit.blocks[int(k.split(".")[1])].attn.rel_pos_bias_grid
            resized, how = resize_rel_pos_bias_table(v, (g, g), dst), "relative-position bias table, bicubic"
        else:
            raise ValueError("no conversion between these shapes")
    except ValueError as e:
        raise CheckpointError(
            f"{report.source}: key {k!r} has shape {list(have)}, the model expects {list(want)} ({e}); "
            f"is this checkpoint for another backbone width or layout?"
        ) from e
    report.resized[k] = (have, want, how)
    return resized


def _load_lm_head(model: nn.Module, sd: Mapping[str, Tensor], report: LoadReport, source: str) -> None:
    """A pre-training student (a module with an ``lm_head`` beside its ViT) takes the checkpoint's ``lm_head``,
    so that pre-training continues from EVA's MIM weights; other models still drop it."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Module):
        return
    # beside the backbone's keys (EVA's MIM layout: dropped) or outside its prefix (a whole student: unexpected)
    found = {k: report.prefix + k for k in report.dropped if k.startswith("lm_head.")}
    if report.prefix:
        found.update({k: k for k in report.unexpected if k.startswith("lm_head.")})
    if not found:
        return
    target = head.state_dict()
    weights = {}
    for k, full in found.items():
        name = k[len("lm_head.") :]
        value = sd.get(full)
        if name not in target or not isinstance(value, Tensor):
            raise CheckpointError(
                f"{source}: key {k!r} does not match the model's lm_head ({sorted(target)})"
            )
        if tuple(value.shape) != tuple(target[name].shape):
            raise CheckpointError(
                f"{source}: key {k!r} has shape {list(value.shape)}, the model's lm_head expects "
                f"{list(target[name].shape)} (a student for another teacher width?)"
            )
        weights[name] = value
    head.load_state_dict(weights, strict=False)
    for k in found:
        report.dropped.pop(k, None)
        if k in report.unexpected:
            report.unexpected.remove(k)
        report.loaded.append(k)
    report.missing += [f"lm_head.{n}" for n in target if n not in weights]


def load_checkpoint(
    model: nn.Module,
    checkpoint: PathOrState,
    *,
    key: Optional[str] = None,
    prefix: Optional[str] = None,
    patch_resize: str = "bicubic",
    rel_pos_resize: str = "linear",
    allow_pickle: bool = False,
    verbose: bool = True,
    check_finite: bool = True,
    source: Optional[str] = None,
    pos_resize: str = "eva",
) -> LoadReport:
    """Loads backbone weights into the :class:`EVAViT` of ``model`` from a file or an in-memory checkpoint.

    Args:
        checkpoint: a path (``.pth``/``.pt``/``.bin``/``.safetensors``) or a (possibly wrapped) state dict.
        key: the checkpoint entry holding the state dict; found automatically when omitted.
        prefix: the backbone's key prefix in the checkpoint; found automatically when omitted.
        patch_resize: ``bicubic`` (EVA) or ``pinv`` (timm) for a patch kernel of another size.
        rel_pos_resize: ``linear``, ``geometric`` or ``beit`` for relative-position tables of another length.
        pos_resize: the absolute position table's route to the model's grid, ``eva`` (EVA-01's: through the grid
            of the pre-training image at the new patch size when the patch kernel is resized) or ``direct``
            (one bicubic step); see :data:`POS_RESIZE`.
        allow_pickle: read a file that needs arbitrary unpickling (only for files you trust).
        verbose: log the report at INFO level (otherwise at DEBUG); tools decide what reaches the console.
        check_finite: refuse NaN or infinite values (the error names the key).
        source: the name errors and the report give an in-memory checkpoint (default ``<state dict>``).
    Returns:
        The :class:`LoadReport`: loaded, resized, dropped, missing and unexpected keys.
    """
    if isinstance(checkpoint, Mapping):
        source, obj = source or "<state dict>", checkpoint
    else:
        source, obj = str(checkpoint), read_checkpoint(checkpoint, allow_pickle=allow_pickle)
    sd = unwrap_state_dict(obj, source, key)
    converted, report = convert_state_dict(
        sd, model, source, prefix, patch_resize, rel_pos_resize, check_finite, pos_resize
    )
    vit = find_backbone(model)
    result = vit.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # convert_state_dict keeps model keys only
    _load_lm_head(model, sd, report, source)
    logger.log(logging.INFO if verbose else logging.DEBUG, "%s", report.summary())
    return report
