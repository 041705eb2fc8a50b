"""MMDetection 3.x plug-in: the EVA ViT as a backbone and the simple feature pyramid as a neck.

Importing this package registers ``EVAViTBackbone`` and ``EVASimpleFPN`` in mmdet's model registry; configs do it
with ``custom_imports = dict(imports=["eva_transfer_projects.mmdetection"])``. The packaging stand-ins come first: with
mmcv-lite, mmcv's compiled RoIAlign and NMS (called by mmdet's two-stage heads) are routed to torchvision (only
when the compiled ops are missing, see ``projects/compat.py``). Layer-wise lr decay uses the mmengine optimizer
constructor ``LayerDecayOptimWrapperConstructor`` of ``eva_transfer_projects.mmengine_layer_decay`` (shared with the
segmentation plug-in, registered in mmengine's root registry, so mmdet finds it).
"""

from eva_transfer_projects.compat import apply_mmcv

apply_mmcv()

import mmdet.models  # noqa: E402,F401  (mmdet's detectors, heads and transforms register first)

from eva_transfer_projects.mmengine_layer_decay import LayerDecayOptimWrapperConstructor  # noqa: E402

from .backbone import EVAViTBackbone  # noqa: E402
from .neck import EVASimpleFPN  # noqa: E402

__all__ = ["EVAViTBackbone", "EVASimpleFPN", "LayerDecayOptimWrapperConstructor"]
