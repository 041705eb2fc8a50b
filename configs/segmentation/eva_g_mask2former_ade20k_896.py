# EVA-g Mask2Former on ADE20K (paper: 61.5 single-scale, 62.3 with --tta): 150 classes, 20k iterations,
# lr 2.5e-5 (the schedule's defaults), initialised from the COCO-Stuff-164k model (its 171-class
# classifier is left out by shape and re-initialised).
_base_ = [
    "./_base_/models/mask2former_eva_adapter.py",
    "./_base_/datasets/ade20k.py",
    "./_base_/default_runtime.py",
    "./_base_/schedules/adamw_layer_decay_poly.py",
]
load_from = "work_dirs/eva_g_mask2former_cocostuff164k_896/iter_60000.pth"
model = dict(data_preprocessor=dict(size={{_base_.crop_size}}), test_cfg=dict(crop_size={{_base_.crop_size}}))
