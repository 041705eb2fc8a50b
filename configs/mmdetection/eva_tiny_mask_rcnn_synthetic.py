# CPU-sized run of the same detector on the synthetic COCO-format shapes (projects/detection/data/synthetic.py:
# 6 classes, 128 px images): the tiny EVA detection preset, narrow heads, anchors of 16-256 px, a short schedule.
# The data is expected under data_root (coco_train.json / coco_val.json in annotations/, images in train/, val/).
_base_ = ["./_base_/mask_rcnn_eva_vitdet.py", "mmdet::_base_/default_runtime.py"]

data_root = "./datasets/synthetic/coco/"
classes = (
    "red_rectangle",
    "green_ellipse",
    "yellow_triangle",
    "blue_diamond",
    "orange_hexagon",
    "purple_cross",
)
num_classes = len(classes)
image_size = (128, 128)
width = 32

model = dict(
    data_preprocessor=dict(batch_augments=[dict(type="BatchFixedSizePad", size=image_size, pad_mask=True)]),
    backbone=dict(preset="eva_tiny_det", img_size=128, drop_path_rate=0.0, use_act_checkpoint=False),
    neck=dict(in_channels=64, out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width, anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, conv_out_channels=16, fc_out_channels=128, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=16, num_classes=num_classes),
    ),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=400, max_per_img=150),
        rcnn=dict(sampler=dict(num=32)),
    ),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100)),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomResize", scale=image_size, ratio_range=(0.5, 1.5), keep_ratio=True),
    dict(
        type="RandomCrop",
        crop_type="absolute_range",
        crop_size=image_size,
        recompute_bbox=True,
        allow_negative_crop=True,
    ),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
metainfo = dict(classes=classes)
train_dataloader = dict(
    batch_size=2,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type="CocoDataset",
        data_root=data_root,
        metainfo=metainfo,
        ann_file="annotations/coco_train.json",
        data_prefix=dict(img="train/"),
        filter_cfg=dict(filter_empty_gt=True),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type="CocoDataset",
        data_root=data_root,
        metainfo=metainfo,
        ann_file="annotations/coco_val.json",
        data_prefix=dict(img="val/"),
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    type="CocoMetric", ann_file=data_root + "annotations/coco_val.json", metric=["bbox", "segm"]
)
test_evaluator = val_evaluator

optim_wrapper = dict(
    type="OptimWrapper",
    constructor="LayerDecayOptimWrapperConstructor",
    # the standard scope: no decay on 1-D parameters and position tables (docs/records/fidelity.md, MMDetection)
    paramwise_cfg=dict(layer_decay_rate=0.9, scheme="head_full_lr"),
    optimizer=dict(type="AdamW", lr=1.5e-3, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=dict(max_norm=1.0),
)
max_iters = 300
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type="MultiStepLR", begin=0, end=max_iters, by_epoch=False, milestones=[260], gamma=0.1),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=max_iters),
)
log_processor = dict(type="LogProcessor", window_size=20, by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
work_dir = "./output/eva_tiny_mask_rcnn_synthetic"
