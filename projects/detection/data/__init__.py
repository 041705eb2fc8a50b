"""Detection data: your own COCO/LVIS-format datasets in Detectron2, and a synthetic dataset maker."""

from eva_transfer_projects import compat

compat.apply_detectron2()

from .datasets import (  # noqa: E402
    CheckedDatasetMapper,
    DatasetCheck,
    DatasetError,
    ImageFileError,
    dataset_metadata,
    load_dataset_dicts,
    register_dataset,
    unregister_dataset,
    validate_dataset,
)
from .synthetic import make_synthetic_dataset  # noqa: E402

__all__ = [
    "CheckedDatasetMapper",
    "DatasetCheck",
    "DatasetError",
    "ImageFileError",
    "dataset_metadata",
    "load_dataset_dicts",
    "make_synthetic_dataset",
    "register_dataset",
    "unregister_dataset",
    "validate_dataset",
]
