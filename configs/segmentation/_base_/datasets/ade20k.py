# ADE20K (ADEChallengeData2016 layout), 896 crops. Labels are shifted by reduce_zero_label as the dataset says.
# data_root is relative to the working directory; override it
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
# single-scale test, the authors' (EVA-01/seg/configs/ade20k/*_ss*.py, coco_stuff164k/*_ss*.py): short side 896
# (long side at most 3584), then both sides resized (bilinear) up to multiples of 32, not padded
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=train_scale, keep_ratio=True),
    dict(type="ResizeToMultiple", size_divisor=32),
    dict(type="LoadCheckedAnnotations"),
    dict(type="PackSegInputs"),
]
# multi-scale + flip testing (tools/test_seg.py --tta), the authors' (EVA-01/seg/configs/ade20k/*_ms.py): the
# test scale (3584, 896) times 512/896 ... 1280/896, sides resized to multiples of 32, flip, images with a side
# below the 896 window padded to 896 (bottom/right); EncoderDecoderShortSidePad removes the padding afterwards.
tta_ratios = [512 / 896, 640 / 896, 768 / 896, 896 / 896, 1024 / 896, 1152 / 896, 1280 / 896]
tta_pad_size = 896
# PackSegInputs' default meta keys plus PadShortSide's record of its padding (text configs cannot import the
# plug-in's PACK_META_KEYS; tests/segmentation/test_configs.py checks that this tuple equals it)
tta_meta_keys = (
    "img_path",
    "seg_map_path",
    "ori_shape",
    "img_shape",
    "pad_shape",
    "scale_factor",
    "flip",
    "flip_direction",
    "reduce_zero_label",
    "short_side_padding",
)
tta_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(
        type="TestTimeAug",
        transforms=[
            [
                dict(type="Resize", scale=(int(train_scale[0] * r), int(train_scale[1] * r)), keep_ratio=True)
                for r in tta_ratios
            ],
            [dict(type="ResizeToMultiple", size_divisor=32)],
            [
                dict(type="RandomFlip", prob=0.0, direction="horizontal"),
                dict(type="RandomFlip", prob=1.0, direction="horizontal"),
            ],
            [dict(type="PadShortSide", size=tta_pad_size, pad_val=0, seg_pad_val=255)],
            [dict(type="LoadCheckedAnnotations")],
            [dict(type="PackSegInputs", meta_keys=tta_meta_keys)],
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
