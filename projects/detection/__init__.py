"""Detectron2 plug-in: EVA Cascade Mask R-CNN.

Importing this package registers the EVA backbone with Detectron2 (``BACKBONE_REGISTRY``) and, on installs
without a loadable ``detectron2._C``, the stand-in that lets ``detectron2.layers`` import.
"""

from projects import compat

compat.apply_detectron2()

from .backbone import EVADetectionBackbone, build_eva_backbone  # noqa: E402
from .roi_heads import EVACascadeROIHeads  # noqa: E402

__all__ = ["EVADetectionBackbone", "build_eva_backbone", "EVACascadeROIHeads"]
