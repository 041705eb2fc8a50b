"""Masked image modelling with CLIP teacher features (EVA-01 pre-training).

Framework-free like the rest of the core: torch, timm, numpy and PIL only (open_clip when asked for).
"""

from .config import DEFAULTS, ConfigError, load_pretrain_config
from .data import GlobalBatchSampler, MIMDataset, list_images, random_resized_crop_box
from .masking import BlockMaskGenerator, MaskBlock
from .objective import lr_at_step, mim_loss
from .student import MIMStudent, build_student, export_state_dict, masked_cosine_loss
from .teacher import CLIPTeacher, build_teacher, check_target_width
from .trainer import train

__all__ = [
    "DEFAULTS",
    "BlockMaskGenerator",
    "CLIPTeacher",
    "ConfigError",
    "GlobalBatchSampler",
    "MIMDataset",
    "MIMStudent",
    "MaskBlock",
    "build_student",
    "build_teacher",
    "check_target_width",
    "export_state_dict",
    "list_images",
    "load_pretrain_config",
    "lr_at_step",
    "masked_cosine_loss",
    "mim_loss",
    "random_resized_crop_box",
    "train",
]
