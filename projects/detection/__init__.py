"""Detectron2 plug-in: EVA Cascade Mask R-CNN.

Importing this package registers the EVA backbones (the ViT alone and with its pyramid) with Detectron2 (``BACKBONE_REGISTRY``) and, on installs
without a loadable ``detectron2._C``, the stand-in that lets ``detectron2.layers`` import.
"""

from eva_transfer_projects import compat

compat.apply_detectron2()

from .backbone import EVADetectionBackbone, EVAViTNet, build_eva_backbone, build_eva_vit_backbone  # noqa: E402
from .meta_arch import EVAGeneralizedRCNN  # noqa: E402
from .roi_heads import EVACascadeROIHeads  # noqa: E402

__all__ = [
    "EVADetectionBackbone",
    "EVAViTNet",
    "build_eva_backbone",
    "build_eva_vit_backbone",
    "EVACascadeROIHeads",
    "EVAGeneralizedRCNN",
]
