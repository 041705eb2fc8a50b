"""A COCO detector evaluated at 1536 px on the LVIS v1 val annotations of the 80 COCO classes (paper Table 8b),
as the authors' ``COCO/cascade_mask_rcnn_vitdet_eva_1536_lvis_annotation.py``: their 1536 COCO model settings,
the test settings their file leaves at the defaults (hard NMS 0.5, score 0.05, 100 per image, no maskness), and
the LVIS evaluator at 300 per image on ``lvis_v1_val_cocofied``, which the authors' ``builtin.py`` registers as
``lvis/lvis_v1_val_5k_cocofied.json``: the 5k LVIS v1 val images that are COCO val2017 images.

Write the annotation file once with ``python tools/make_cocofied_lvis.py datasets/lvis/lvis_v1_val.json
datasets/lvis/lvis_v1_val_5k_cocofied.json --coco-val2017 datasets/coco/annotations/instances_val2017.json``;
evaluate with ``--eval-only train.init_checkpoint=<COCO model>``. (All 19.8k LVIS v1 val images, ~14.8k of them
COCO train images, are not the authors' protocol; see docs/detection_data_eval.md.)
"""

from .eva_g_coco_1536_test import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.datasets = [
    dict(
        name="lvis_v1_val_cocofied",
        json_file="datasets/lvis/lvis_v1_val_5k_cocofied.json",
        image_root="datasets/coco",
        fmt="lvis",
    )
]
dataloader.test.dataset.names = "lvis_v1_val_cocofied"
dataloader.evaluator.max_dets_per_image = 300
model.roi_heads.soft_nms = None
model.roi_heads.override_score_thresh = None
model.roi_heads.maskness_rescoring = False
train.output_dir = "./output/eva_g_coco_1536_lvis_annotation"
