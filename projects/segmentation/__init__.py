"""MMSegmentation plug-in: EVA ViT-Adapter backbone, EVA-02's plain-ViT feature pyramid, layer-decay optimizer
constructor, checked datasets.

Importing this package registers everything in mmseg's / mmengine's registries; configs do it with
``custom_imports = dict(imports=["eva_transfer_projects.segmentation"])``. The packaging stand-ins come first: mmcv-lite has
no compiled ops, so ``mmcv._ext`` is stood in for and mmcv's GPU deformable attention is routed to the core's
pure-PyTorch op (both only when the compiled ops are missing).
"""

from eva_transfer_projects.compat import apply_mmcv

apply_mmcv()

import mmdet.models  # noqa: E402,F401  (mmdet's Mask2Former parts register under the "mmdet" scope)

from eva_transfer_projects.mmengine_layer_decay import LayerDecayOptimWrapperConstructor  # noqa: E402

from .backbone import EVAViTAdapter, norm_layer_from_cfg  # noqa: E402
from .checkpoint_io import AtomicLocalBackend, load_local_checkpoint  # noqa: E402
from .datasets import (  # noqa: E402
    CheckedADE20KDataset,
    CheckedCOCOStuffDataset,
    CheckedSegDataset,
    DatasetFileError,
    LoadCheckedAnnotations,
    SyntheticADEDataset,
)
from .runtime import worker_threads_init  # noqa: E402
from .schedule import ScheduleFollowsRunHook  # noqa: E402
from .test_time import EncoderDecoderShortSidePad, PadShortSide  # noqa: E402
from .training import CheckedIterBasedTrainLoop  # noqa: E402
from .vit_pyramid import EVAViTFeaturePyramid  # noqa: E402

__all__ = [
    "EVAViTAdapter",
    "norm_layer_from_cfg",
    "EVAViTFeaturePyramid",
    "CheckedADE20KDataset",
    "CheckedCOCOStuffDataset",
    "CheckedSegDataset",
    "DatasetFileError",
    "LoadCheckedAnnotations",
    "SyntheticADEDataset",
    "LayerDecayOptimWrapperConstructor",
    "CheckedIterBasedTrainLoop",
    "AtomicLocalBackend",
    "load_local_checkpoint",
    "EncoderDecoderShortSidePad",
    "PadShortSide",
    "ScheduleFollowsRunHook",
    "worker_threads_init",
]
