# The synthetic ADE-layout data of tools/make_synthetic_ade.py (5 classes, 64x64 images). data_root is relative
# to the working directory; tests point it at their own folder with --cfg-options / cfg.merge_from_dict.
_base_ = ["./ade20k.py"]
dataset_type = "SyntheticADEDataset"
data_root = "data/synthetic_ade"
crop_size = (64, 64)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadCheckedAnnotations"),
    dict(type="RandomResize", scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadCheckedAnnotations"),
    dict(type="PackSegInputs"),
]
# the ADE20K test-time steps at this size: scales 0.5 and 1.5 of 64, the smaller one padded to the 64 window
tta_ratios = [0.5, 1.5]
tta_pad_size = 64
tta_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(
        type="TestTimeAug",
        transforms=[
            [dict(type="Resize", scale=(int(256 * r), int(64 * r)), keep_ratio=True) for r in tta_ratios],
            [dict(type="ResizeToMultiple", size_divisor=32)],
            [
                dict(type="RandomFlip", prob=0.0, direction="horizontal"),
                dict(type="RandomFlip", prob=1.0, direction="horizontal"),
            ],
            [dict(type="PadShortSide", size=tta_pad_size, pad_val=0, seg_pad_val=255)],
            [dict(type="LoadCheckedAnnotations")],
            [dict(type="PackSegInputs", meta_keys={{_base_.tta_meta_keys}})],
        ],
    ),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline),
)
test_dataloader = val_dataloader
