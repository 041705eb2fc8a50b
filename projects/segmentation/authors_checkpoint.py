"""The EVA-01 authors' segmentor checkpoints (mmseg 0.x ViT-Adapter + Mask2Former) in this plug-in's layout.

The released files (``eva_sem_seg_mask2former_*.pth``) hold ``{"state_dict": ...}`` with

- ``backbone.*``: the BEiT-style ViT (``blocks``, ``patch_embed``, ``pos_embed`` at the 56x56 grid of the 896 crop,
  ``cls_token``; in the second model set ``gamma_1/gamma_2`` and per-block ``relative_position_bias_table`` /
  ``relative_position_index``) and the adapter (``level_embed``, ``spm``, ``interactions``, ``up``, ``norm1..4``),
  converted by :func:`eva_transfer.adapter.convert_adapter_state_dict`;
- ``decode_head.*``: Mask2Former built from mmcv 1.x transformer layers, renamed here to mmseg 1.x's
  ``Mask2FormerHead`` (mmdet 3.x layers) by :func:`head_key`.

Head renames (everything else keeps its name: ``query_embed``, ``query_feat``, ``level_embed``, ``cls_embed``,
``mask_embed``, ``decoder_input_projs``, ``post_norm``, the pixel decoder's convolutions and level encoding)::

    pixel_decoder.encoder.layers.N.attentions.0.*   -> pixel_decoder.encoder.layers.N.self_attn.*
    pixel_decoder.encoder.layers.N.ffns.0.*         -> pixel_decoder.encoder.layers.N.ffn.*
    transformer_decoder.layers.N.attentions.0.*     -> transformer_decoder.layers.N.cross_attn.*
    transformer_decoder.layers.N.attentions.1.*     -> transformer_decoder.layers.N.self_attn.*
    transformer_decoder.layers.N.ffns.0.*           -> transformer_decoder.layers.N.ffn.*

The decoder layers' attention order follows the authors' ``operation_order`` ``(cross_attn, norm, self_attn,
norm, ffn, norm)``: their first attention is the cross-attention; ``norms.0..2`` keep their order.

The EVA-02 authors' UperNet files (``eva02_*_ade_seg_upernet_*.pth``, mmseg 0.x, ``EVA-02/seg/backbone/eva2.py``)
hold their ``EVA2`` backbone under ``backbone.``: the ViT (``cls_token``, ``pos_embed`` at the crop's grid,
``q_proj`` / ``k_proj`` / ``v_proj`` with ``q_bias`` / ``v_bias``, SwiGLU ``w1`` / ``w2`` / ``ffn_ln`` / ``w3``, the
rotary buffers ``rope.freqs_*`` and ``blocks.N.attn.rope.freqs_*``), read by the core converter into
:class:`~eva_transfer_projects.segmentation.vit_pyramid.EVAViTFeaturePyramid`'s ``vit``, and the pyramid
``fpn1..fpn4`` (``backbone.pyramid.0..3`` here); ``decode_head.*`` (UPerHead) and ``auxiliary_head.*`` (FCNHead)
keep their names, ``conv_seg`` included (these heads classify with it).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from eva_transfer.adapter import ViTAdapter, convert_adapter_state_dict
from eva_transfer.checkpoint_io import CheckpointError, read_checkpoint, save_checkpoint, unwrap_state_dict
from eva_transfer.convert import LoadReport, convert_state_dict

from .vit_pyramid import EVAViTFeaturePyramid

logger = logging.getLogger(__name__)

__all__ = [
    "read_segmentor_checkpoint",
    "convert_authors_segmentor",
    "head_key",
    "is_authors_segmentor",
    "load_authors_segmentor",
    "prepare_test_checkpoint",
    "convert_segmentor_file",
]

#: the decode head's mmcv 1.x layer names -> mmdet 3.x names
_HEAD_RULES = (
    (re.compile(r"^(pixel_decoder\.encoder\.layers\.\d+\.)attentions\.0\."), r"\1self_attn."),
    (re.compile(r"^(pixel_decoder\.encoder\.layers\.\d+\.)ffns\.0\."), r"\1ffn."),
    (re.compile(r"^(transformer_decoder\.layers\.\d+\.)attentions\.0\."), r"\1cross_attn."),
    (re.compile(r"^(transformer_decoder\.layers\.\d+\.)attentions\.1\."), r"\1self_attn."),
    (re.compile(r"^(transformer_decoder\.layers\.\d+\.)ffns\.0\."), r"\1ffn."),
)

#: head entries with no parameters in the mmseg 1.x head, and why
_HEAD_DROPPED = {
    "conv_seg.weight": "unused classifier of mmseg 0.x's BaseDecodeHead (Mask2Former classifies with cls_embed)",
    "conv_seg.bias": "unused classifier of mmseg 0.x's BaseDecodeHead (Mask2Former classifies with cls_embed)",
}


def head_key(k: str) -> str:
    """A decode-head key (relative to ``decode_head.``) of the authors' mmseg 0.x layout in mmseg 1.x's layout."""
    for pattern, repl in _HEAD_RULES:
        k = pattern.sub(repl, k)
    return k


def is_authors_segmentor(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict is in the authors' mmseg 0.x layout (adapter norms ``norm1..4``, mmcv 1.x layers; EVA-02:
    the pyramid ``fpn1..4`` beside the ViT in ``backbone.``)."""
    return (
        "backbone.norm1.weight" in state_dict
        or any(
            re.match(r"^decode_head\.transformer_decoder\.layers\.\d+\.attentions\.", k) for k in state_dict
        )
        or any(re.match(r"^backbone\.fpn[1-4]\.", k) for k in state_dict)
    )


def _find(model: nn.Module, kind: type) -> Optional[tuple[str, nn.Module]]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]
    if len(found) > 1:
        raise ValueError(f"expected one {kind.__name__} inside {type(model).__name__}, found {len(found)}")
    return found[0] if found else None


def _convert_eva02_backbone(
    backbone_sd: Mapping[str, Tensor], name: str, backbone: EVAViTFeaturePyramid, source: str
) -> tuple[dict[str, Tensor], LoadReport]:
    """The authors' ``EVA2`` backbone: the ViT through the core converter into ``backbone.vit``, ``fpnN.*`` as
    ``pyramid.{N-1}.*``. Keys the model has no place for raise :class:`CheckpointError`."""
    pyramid = {k: v for k, v in backbone_sd.items() if re.match(r"^fpn[1-4]\.", k)}
    vit_sd = {k: v for k, v in backbone_sd.items() if k not in pyramid}
    converted, report = convert_state_dict(vit_sd, backbone.vit, source, prefix="")
    if report.unexpected:
        raise CheckpointError(f"{source}: backbone keys with no place in the ViT: {report.unexpected[:5]}")
    out = {f"{name}.vit.{k}": v for k, v in converted.items()}
    report.loaded = [f"{name}.vit.{k}" for k in report.loaded]
    report.dropped = {f"backbone.{k}": why for k, why in report.dropped.items()}
    report.renamed = {f"backbone.{k}": f"{name}.vit.{v}" for k, v in report.renamed.items()}
    for k, v in pyramid.items():
        new = re.sub(r"^fpn([1-4])\.", lambda m: f"{name}.pyramid.{int(m.group(1)) - 1}.", k)
        out[new] = v
        report.loaded.append(new)
        report.renamed[f"backbone.{k}"] = new
    return out, report


#: the classifier: its rows are the classes (+ no-object), the one head part that fine-tuning on another dataset
#: replaces (the authors initialise ADE20K from their COCO-Stuff model this way)
_CLASSIFIER = ("cls_embed.weight", "cls_embed.bias")


def convert_authors_segmentor(
    state_dict: Mapping[str, Tensor],
    model: nn.Module,
    source: str = "<state dict>",
    reinit_classifier: bool = False,
) -> tuple[dict[str, Tensor], LoadReport]:
    """Converts a whole segmentor state dict of the authors' layout into ``model``'s (an mmseg 1.x
    ``EncoderDecoder``: the ``EVAViTAdapter`` backbone and ``Mask2FormerHead`` of EVA-01, or EVA-02's
    ``EVAViTFeaturePyramid`` with ``UPerHead`` and the auxiliary ``FCNHead``; the meta device works).

    Every checkpoint key is used or dropped with a reason (in the report), and every model key must be filled
    with a tensor of its shape; anything else raises :class:`CheckpointError` naming ``source`` and the key.
    ``reinit_classifier``: a classifier for another class count is dropped (reported) and left out of the result,
    for fine-tuning on another dataset.
    """
    target = model.state_dict()
    heads = (
        ("decode_head.", "auxiliary_head.")
        if any(k.startswith("auxiliary_head.") for k in target)
        else ("decode_head.",)
    )
    backbone_sd = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    head_sd = {k: v for k, v in state_dict.items() if k.startswith(heads)}
    other = [k for k in state_dict if not k.startswith(("backbone.", *heads))]
    if other:
        raise CheckpointError(
            f"{source}: keys outside backbone.* and {'* and '.join(heads)}* (a head the config has not?): "
            f"{other[:5]}"
        )
    if not backbone_sd or not head_sd:
        raise CheckpointError(
            f"{source}: expected backbone.* and decode_head.* keys (first keys: {list(state_dict)[:5]})"
        )
    pyramid = _find(model, EVAViTFeaturePyramid)
    if pyramid is not None:
        out, report = _convert_eva02_backbone(backbone_sd, *pyramid, source)
    else:
        adapter = _find(model, ViTAdapter)
        if adapter is None:
            raise CheckpointError(
                f"{source}: the model has neither an EVA ViT-Adapter nor an EVA-02 pyramid backbone"
            )
        adapter_sd, report = convert_adapter_state_dict(backbone_sd, adapter[1], source)
        out = {f"{adapter[0]}.{k}": v for k, v in adapter_sd.items()}
        report.loaded = [f"{adapter[0]}.{k}" for k in report.loaded]
    for full, v in head_sd.items():
        part, k = full.split(".", 1)
        new = f"{part}.{head_key(k)}"
        if k in _HEAD_DROPPED and new not in target:
            report.dropped[full] = _HEAD_DROPPED[k]
            continue
        if new not in target:
            raise CheckpointError(f"{source}: head key '{full}' (as {new!r}) is not in the model")
        if (
            reinit_classifier
            and part == "decode_head"
            and k in _CLASSIFIER
            and v.shape[1:] == target[new].shape[1:]
        ):
            if v.shape[0] != target[new].shape[0]:
                report.dropped[full] = (
                    f"classifier for {v.shape[0] - 1} classes, the config has {target[new].shape[0] - 1}: "
                    "left at its initial values"
                )
                continue
        if tuple(v.shape) != tuple(target[new].shape):
            raise CheckpointError(
                f"{source}: head key '{full}' has shape {list(v.shape)}, the model's {new!r} has "
                f"{list(target[new].shape)} (another class count, query count, width or decoder depth?)"
            )
        out[new] = v
        report.loaded.append(new)
        if new != full:
            report.renamed[full] = new
    dropped_classifier = {f"decode_head.{k}" for k in _CLASSIFIER if f"decode_head.{k}" in report.dropped}
    missing = [k for k in target if k not in out and k not in dropped_classifier]
    if missing:
        raise CheckpointError(
            f"{source}: the model's {missing[:5]} ({len(missing)} in all) have no entry in the checkpoint "
            "(is the config's decoder depth or adapter the checkpoint's?)"
        )
    report.missing = []
    return out, report


def load_authors_segmentor(
    model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any], allow_pickle: bool = False
) -> LoadReport:
    """Loads a released segmentor checkpoint of the authors' layout whole into ``model`` (strict)."""
    source = "<state dict>" if isinstance(checkpoint, Mapping) else str(checkpoint)
    obj = (
        checkpoint
        if isinstance(checkpoint, Mapping)
        else read_segmentor_checkpoint(str(checkpoint), allow_pickle)
    )
    sd, report = convert_authors_segmentor(unwrap_state_dict(obj, source), model, source)
    model.load_state_dict(sd, strict=True)
    logger.info("%s", report.summary())
    return report


def read_segmentor_checkpoint(checkpoint: str, allow_pickle: bool = False) -> Any:
    """Reads a runner checkpoint (this plug-in's) or a released one without executing code (the runner's own
    types allowed, as mmengine's loader here does); full unpickling only with ``allow_pickle``."""
    if allow_pickle or str(checkpoint).endswith(".safetensors"):
        return read_checkpoint(checkpoint, allow_pickle=allow_pickle)
    from .checkpoint_io import load_local_checkpoint

    try:
        return load_local_checkpoint(checkpoint, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{checkpoint}: the file holds Python objects that loading without executing code refuses "
            f"({str(e).splitlines()[0]}); if you trust it, pass --allow-pickle"
        ) from e


def prepare_test_checkpoint(
    checkpoint: str,
    model_cfg: Any,
    work_dir: Optional[str] = None,
    allow_pickle: bool = False,
    reinit_classifier: bool = False,
) -> str:
    """The checkpoint path for the runner: ``checkpoint`` itself when it is in this plug-in's layout; a converted
    copy (in ``work_dir`` or a temporary folder) when it is in the authors' layout. ``reinit_classifier``: for
    ``load_from`` in training, a classifier for another class count is left out (see
    :func:`convert_authors_segmentor`)."""
    obj = read_segmentor_checkpoint(checkpoint, allow_pickle)
    try:
        sd = unwrap_state_dict(obj, checkpoint)
    except CheckpointError:
        return checkpoint  # not a plain tensor dict: left to mmengine's loader
    if not is_authors_segmentor(sd):
        return checkpoint
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    # the tools call this before the runner sets the config's default scope: mmseg's names (the data
    # preprocessor, the head's parts) resolve only inside it
    with DefaultScope.overwrite_default_scope("mmseg"), torch.device("meta"):
        model = MODELS.build(model_cfg)
    out, report = convert_authors_segmentor(sd, model, checkpoint, reinit_classifier)
    # on the run's log (the tools call this before the runner exists): what was used, renamed and dropped
    from mmengine.logging import print_log

    print_log(report.summary(), logger="current")
    folder = work_dir or tempfile.mkdtemp(prefix="eva_seg_ckpt_")
    path = os.path.join(folder, os.path.basename(checkpoint).rsplit(".", 1)[0] + "_converted.pth")
    save_checkpoint({"state_dict": {k: v.contiguous() for k, v in out.items()}}, path)
    return path


def convert_segmentor_file(
    checkpoint: str, config: str, key: Optional[str] = None, allow_pickle: bool = False
) -> tuple[dict[str, Tensor], LoadReport]:
    """A whole EVA-01 or EVA-02 segmentor checkpoint (backbone, adapter or pyramid through the core converter and
    :func:`convert_authors_segmentor`, head through :func:`head_key`) for the MMSegmentation config file ``config``; the model is built on the meta device (shapes
    only). Returns the state dict to save under ``state_dict`` and the report (``tools/convert_checkpoint.py
    --segmentor-config``)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    sd = unwrap_state_dict(read_segmentor_checkpoint(checkpoint, allow_pickle), checkpoint, key)
    cfg = Config.fromfile(config)
    with DefaultScope.overwrite_default_scope("mmseg"), torch.device("meta"):
        model = MODELS.build(cfg.model)
    out, report = convert_authors_segmentor(sd, model, checkpoint)
    return {k: v.contiguous() for k, v in out.items()}, report
