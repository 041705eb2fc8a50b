# ADE20K at EVA-02's 512 crops (EVA-02/seg/configs/_base_/datasets/ade20k.py): training scale (2048, 512) with a
# 0.5-2.0 jitter, 512 crops (cat_max_ratio 0.75), flip, photometric distortion, padding to 512 by the data
# preprocessor; single-scale test at scale (2048, 512), aspect kept, no resizing to multiples of 32 (the slide
# window pads).
_base_ = ["./ade20k.py"]
crop_size = (512, 512)
train_scale = (2048, 512)
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
# multi-scale + flip testing (tools/test_seg.py --tta) at the authors' ratios of (2048, 512)
# (EVA-02/seg/configs/_base_/datasets/ade20k_ms_eval.py:24); their SETR_Resize step is approximated by a plain
# aspect-keeping resize (not checked against theirs)
tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(
        type="TestTimeAug",
        transforms=[
            [
                dict(type="Resize", scale=(int(train_scale[0] * r), int(train_scale[1] * r)), keep_ratio=True)
                for r in tta_ratios
            ],
            [
                dict(type="RandomFlip", prob=0.0, direction="horizontal"),
                dict(type="RandomFlip", prob=1.0, direction="horizontal"),
            ],
            [dict(type="LoadCheckedAnnotations")],
            [dict(type="PackSegInputs")],
        ],
    ),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
