"""eva-transfer: the framework-free core (EVA ViT backbone, pyramid, adapter, checkpoints, lr decay)."""

from . import timm_models  # noqa: F401  (registers every preset with timm)
from .adapter import ViTAdapter, build_vit_adapter
from .checkpoint import CheckpointError, LoadReport, load_checkpoint, read_checkpoint, save_checkpoint
from .lr_decay import layer_id_for_name, param_groups_layer_decay
from .presets import PRESETS, build_backbone
from .pyramid import SimpleFeaturePyramid
from .vit import EVAViT

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CheckpointError",
    "EVAViT",
    "LoadReport",
    "SimpleFeaturePyramid",
    "ViTAdapter",
    "build_backbone",
    "build_vit_adapter",
    "layer_id_for_name",
    "load_checkpoint",
    "param_groups_layer_decay",
    "read_checkpoint",
    "save_checkpoint",
]
