"""EVA-g LVIS model evaluated at 1536 px, as the authors' ``LVIS/cascade_mask_rcnn_vitdet_eva_1536.py``: up to
1000 detections above score 0.001 per image, scored by the evaluator up to 1000 per image (their
``max_dets_per_image=1000``, paper Table 18), and the global blocks' relative-position tables resized with the
authors' "beit" rule when the 1280 checkpoint loads. Test protocol of their LVIS command line
(``train.init_checkpoint=eva_lvis.pth``, ``model.roi_heads.maskness_thresh=0.5``: 62.2 box / 55.0 mask AP): hard
NMS, maskness rescoring that replaces the scores of box and mask results alike (their box AP includes it)."""

from .eva_g_lvis_1280 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

dataloader.image_size = 1536
model.backbone.net.img_size = 1536
for _predictor in model.roi_heads.box_predictors:
    _predictor.test_score_thresh = 0.001
    _predictor.test_topk_per_image = 1000
dataloader.evaluator.max_dets_per_image = 1000
train.checkpoint_load.rel_pos_resize = "beit"
model.roi_heads.maskness_rescoring = True
model.roi_heads.maskness_threshold = 0.5
train.init_checkpoint = "./checkpoints/eva_lvis.pth"
