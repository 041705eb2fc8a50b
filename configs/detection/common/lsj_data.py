"""Large-scale-jitter data pipeline (flip, scale 0.1-2.0 of ``image_size``, fixed-size crop); test resize to
``image_size``. ``dataloader.datasets`` lists datasets to register before building (your own data).
The mapper is Detectron2's ``DatasetMapper`` with errors that name the image file."""

import eva_transfer_projects.detection  # noqa: F401  (Detectron2 stand-ins before detectron2 imports)

# isort: split

from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from eva_transfer_projects.detection.data import CheckedDatasetMapper
from eva_transfer_projects.detection.data.augmentations import lsj_test_augmentations, lsj_train_augmentations
from eva_transfer_projects.detection.evaluation import build_evaluator

dataloader = OmegaConf.create()
dataloader.image_size = 1280
# entries: dict(name=, json_file=, image_root=, fmt="coco"|"lvis"), registered by tools/train_net.py
dataloader.datasets = []
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(CheckedDatasetMapper)(
        is_train=True,
        augmentations=L(lsj_train_augmentations)(
            image_size="${....image_size}", min_scale=0.1, max_scale=2.0
        ),
        image_format="RGB",
        use_instance_mask=True,
        recompute_boxes=True,
    ),
    total_batch_size=64,
    num_workers=4,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(CheckedDatasetMapper)(
        is_train=False,
        augmentations=L(lsj_test_augmentations)(image_size="${....image_size}"),
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)
dataloader.evaluator = L(build_evaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${train.output_dir}"
)
