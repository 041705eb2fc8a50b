# EVA-g ViTDet-style Mask R-CNN on COCO, MMDetection 3.x: large-scale jitter at 1024 px (scale 0.1-2.0), batch 64
# (16 GPUs x 4), AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.1, 184375 iterations (100 epochs) with steps at
# 163889 and 177546, 250 warm-up iterations, AMP; from ViTDet's recipe, with EVA-g's backbone settings (drop path
# 0.6, windows of 16 with global attention in every 4th block, layer-wise lr decay 0.9). See docs/mmdetection.md.
_base_ = ["./_base_/mask_rcnn_eva_vitdet.py", "mmdet::common/lsj-100e_coco-instance.py"]

image_size = (1024, 1024)
embed_dim = 1408
model = dict(
    data_preprocessor=dict(batch_augments=[dict(type="BatchFixedSizePad", size=image_size, pad_mask=True)]),
    backbone=dict(
        preset="eva_g_det",
        img_size=1024,
        drop_path_rate=0.6,
        use_act_checkpoint=True,
        init_cfg=dict(type="Pretrained", checkpoint="eva_psz14.pt"),
    ),
    neck=dict(in_channels=embed_dim),
)

# one pass over COCO train per "epoch" of the iteration-based loop (no RepeatDataset)
train_dataloader = dict(
    batch_size=4,
    num_workers=8,
    dataset=dict(
        _delete_=True,
        type="CocoDataset",
        data_root={{_base_.data_root}},
        ann_file="annotations/instances_train2017.json",
        data_prefix=dict(img="train2017/"),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline={{_base_.train_pipeline}},
    ),
)
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=image_size, keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type="AmpOptimWrapper",
    constructor="LayerDecayOptimWrapperConstructor",
    # the standard scope: no decay on 1-D parameters and position tables (docs/records/fidelity.md, MMDetection)
    paramwise_cfg=dict(layer_decay_rate=0.9, scheme="head_full_lr"),
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
)
max_iters = 184375
interval = 5000
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=250),
    dict(type="MultiStepLR", begin=0, end=max_iters, by_epoch=False, milestones=[163889, 177546], gamma=0.1),
]
train_cfg = dict(_delete_=True, type="IterBasedTrainLoop", max_iters=max_iters, val_interval=interval)
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    checkpoint=dict(
        type="CheckpointHook", by_epoch=False, save_last=True, interval=interval, max_keep_ckpts=5
    ),
)
log_processor = dict(type="LogProcessor", window_size=50, by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=64)
