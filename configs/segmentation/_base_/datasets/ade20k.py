# ADE20K (ADEChallengeData2016 layout), 896 crops. Labels are shifted by reduce_zero_label as the dataset says. data_root is relative to the working directory; override it
# with --cfg-options train_dataloader.dataset.data_root=... (and the val/test ones) or a symlink at data/.
dataset_type = "CheckedADE20KDataset"
data_root = "data/ade/ADEChallengeData2016"
crop_size = (896, 896)
train_scale = (3584, 896)  # short side 896 before the 0.5-2.0 jitter
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadCheckedAnnotations"),
    dict(type="RandomResize", scale=train_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=train_scale, keep_ratio=True),
    dict(type="LoadCheckedAnnotations"),
    dict(type="PackSegInputs"),
]
# multi-scale + flip testing (tools/test_seg.py --tta)
tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(
        type="TestTimeAug",
        transforms=[
            [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in tta_ratios],
            [
                dict(type="RandomFlip", prob=0.0, direction="horizontal"),
                dict(type="RandomFlip", prob=1.0, direction="horizontal"),
            ],
            [dict(type="LoadCheckedAnnotations")],
            [dict(type="PackSegInputs")],
        ],
    ),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
