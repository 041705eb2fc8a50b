"""eva-transfer: the framework-free core (EVA ViT backbone, pyramid, adapter, checkpoints, lr decay)."""

from . import timm_models  # noqa: F401  (registers every preset with timm)
from .adapter import ViTAdapter, build_vit_adapter
from .checkpoint_io import CheckpointError, read_checkpoint, save_checkpoint
from .convert import LoadReport, load_checkpoint
from .lr_decay import layer_id_for_name, param_groups_layer_decay
from .presets import PRESETS, build_eva_vit
from .pyramid import EVASimpleFeaturePyramid
from .vit import EVAViT

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CheckpointError",
    "EVAViT",
    "LoadReport",
    "EVASimpleFeaturePyramid",
    "ViTAdapter",
    "build_eva_vit",
    "build_vit_adapter",
    "layer_id_for_name",
    "load_checkpoint",
    "param_groups_layer_decay",
    "read_checkpoint",
    "save_checkpoint",
]

# public names that were renamed because they clashed with Detectron2's: old name -> (new name, reason)
_RENAMED = {
    "build_backbone": ("build_eva_vit", "detectron2.modeling.build_backbone builds from a CfgNode"),
    "SimpleFeaturePyramid": (
        "EVASimpleFeaturePyramid",
        "detectron2.modeling.SimpleFeaturePyramid wraps a Backbone",
    ),
}


def __getattr__(name: str):
    if name in _RENAMED:
        new, reason = _RENAMED[name]
        raise AttributeError(
            f"eva_transfer.{name} was renamed eva_transfer.{new} (a different thing from {reason})"
        )
    raise AttributeError(f"module 'eva_transfer' has no attribute {name!r}")
