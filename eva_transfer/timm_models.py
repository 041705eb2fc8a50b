"""timm front door: every preset of :data:`~eva_transfer.presets.PRESETS` is a timm model.

``import eva_transfer`` registers them, so ``timm.create_model("eva_g_det")`` builds the same
:class:`~eva_transfer.vit.EVAViT` as ``build_eva_vit("eva_g_det")``. Weights are not downloaded: pass a local file
with ``pretrained=True, pretrained_cfg_overlay=dict(file=...)``; it goes through this toolkit's converter
(:func:`~eva_transfer.convert.load_checkpoint`), so every format it reads works (EVA MIM, timm ``Eva``,
Detectron2 ViTDet, fine-tuned detectors and segmentors). ``features_only=True`` returns block outputs as
``(B, C, H/p, W/p)`` maps through :meth:`EVAViT.forward_intermediates`; the default ``out_indices`` are four evenly
spaced blocks ending with the last (9, 19, 29, 39 for EVA-g).

Each preset's ``pretrained_cfg`` gives the preprocessing of the authors' recipes (ImageNet mean/std, bicubic
resizing), the preset's input size, and in ``notes`` the authors' checkpoint file the preset is made for.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, register_model
from timm.models._builder import resolve_pretrained_cfg

from .convert import load_checkpoint
from .presets import PRESETS, build_eva_vit, every_kth_block
from .vit import EVAViT

logger = logging.getLogger(__name__)

__all__ = ["AUTHOR_CHECKPOINTS", "default_out_indices", "pretrained_cfg_for"]

_EVA_HUB = "https://huggingface.co/BAAI/EVA"

#: the authors' checkpoint (baaivision/EVA, EVA-01) each released-size preset is made for
AUTHOR_CHECKPOINTS: dict[str, str] = {
    "eva_g": "eva_psz14.pt",  # MIM pre-trained, patch 14, 224
    "eva_g_det": "eva_psz14to16.pt",  # patch kernel resized 14->16; Objects365 stage starts here
    "eva_g_seg": "eva_psz14to16.pt",
}


def default_out_indices(depth: int) -> tuple[int, ...]:
    """Four evenly spaced blocks ending with the last (``features_only``'s default)."""
    return every_kth_block(depth, max(depth // 4, 1))[-4:]


def pretrained_cfg_for(name: str) -> dict[str, Any]:
    """The timm ``pretrained_cfg`` of preset ``name``."""
    cfg = PRESETS[name]
    img = cfg["img_size"]
    img = (img, img) if isinstance(img, int) else tuple(img)
    ckpt = AUTHOR_CHECKPOINTS.get(name)
    eva02 = name.startswith("eva02_")
    notes = (
        f"authors' checkpoint: {ckpt} ({_EVA_HUB}); load a local copy with "
        f"pretrained=True, pretrained_cfg_overlay=dict(file=...)"
        if ckpt
        else f"timm's {name}_patch14_224 weights load through the converter: pretrained=True, "
        "pretrained_cfg_overlay=dict(file=...)"
        if eva02
        else "no released checkpoint of this size; load any converted file with pretrained_cfg_overlay=dict(file=...)",
    )
    return dict(
        url="",
        file=None,
        input_size=(3, *img),
        min_input_size=(3, cfg["patch_size"], cfg["patch_size"]),
        fixed_input_size=False,
        interpolation="bicubic",
        crop_pct=1.0,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        num_classes=0,
        first_conv="patch_embed.proj",
        classifier=None,
        license="mit",
        origin_url=_EVA_HUB if ckpt else None,
        paper_name="EVA-02: A Visual Representation for Neon Genesis"
        if eva02
        else "EVA: Exploring the Limits of Masked Visual Representation Learning at Scale",
        paper_ids="arXiv:2303.11331" if eva02 else "arXiv:2211.07636",
        notes=notes,
    )


default_cfgs: dict[str, dict[str, Any]] = {name: pretrained_cfg_for(name) for name in PRESETS}


def _build(name: str, checkpoint: Optional[str] = None, num_classes: int = 0, **kwargs: Any) -> EVAViT:
    if num_classes:
        raise ValueError(
            f"{name}: num_classes={num_classes}, but the EVA backbone has no classifier (use num_classes=0 and "
            "put a head on forward_head's pooled features)"
        )
    kwargs.pop("global_pool", None)
    model = build_eva_vit(name, **kwargs)
    if checkpoint:
        load_checkpoint(model, checkpoint, verbose=False)
    return model


def _create(
    name: str,
    pretrained: bool = False,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: Optional[dict] = None,
    **kwargs: Any,
):
    kwargs.pop("cache_dir", None)
    cfg = resolve_pretrained_cfg(
        name, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay
    )
    checkpoint = None
    if pretrained:
        checkpoint = cfg.file or (cfg.state_dict if cfg.state_dict is not None else None)
        if checkpoint is None:
            raise ValueError(
                f"{name}: pretrained=True needs a local file, as there is no download: "
                f"timm.create_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file='...')) "
                f"({cfg.notes[0] if cfg.notes else ''})"
            )
    depth = kwargs.get("depth", PRESETS[name]["depth"])
    return build_model_with_cfg(
        lambda **kw: _build(name, checkpoint, **kw),
        name,
        pretrained=False,  # loaded above through this toolkit's converter, before any feature-wrapper pruning
        pretrained_cfg=cfg,
        feature_cfg=dict(out_indices=default_out_indices(depth), feature_cls="getter"),
        **kwargs,
    )


def _register(name: str) -> None:
    def entry(pretrained: bool = False, **kwargs: Any):
        return _create(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = f"timm entry point of the {name!r} preset (see eva_transfer.presets)."
    globals()[name] = register_model(entry)


for _name in PRESETS:
    _register(_name)
