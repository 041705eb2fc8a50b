"""A COCO detector evaluated at 1536 px on the LVIS v1 val annotations of the 80 COCO classes (paper Table 8b),
as the authors' ``COCO/cascade_mask_rcnn_vitdet_eva_1536_lvis_annotation.py``: their 1536 COCO model settings,
the test settings their file leaves at the defaults (hard NMS 0.5, score 0.05, 100 per image, no maskness), and
the LVIS evaluator at 300 per image on ``lvis_v1_val_cocofied``.

Write the annotation file once with ``python tools/make_cocofied_lvis.py datasets/lvis/lvis_v1_val.json
datasets/lvis/lvis_v1_val_cocofied.json``; evaluate with ``--eval-only train.init_checkpoint=<COCO model>``.
"""

from .eva_g_coco_1536_test import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.datasets = [
    dict(
        name="lvis_v1_val_cocofied",
        json_file="datasets/lvis/lvis_v1_val_cocofied.json",
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
