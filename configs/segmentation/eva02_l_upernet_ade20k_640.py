# EVA-02 L + UperNet on ADE20K, 640 crops, 80k iterations: the authors' eva02_L_ade_seg_upernet_sz640
# (EVA-02/seg/configs/eva02/upernet/upernetpro_eva02_large_24_640_slide_80k.py; README: 60.1 mIoU single scale).
# The 512 recipe (eva02_l_upernet_ade20k_512.py: blocks 7, 11, 15, 23, drop path 0.2, lr 4e-5, layer decay 0.9,
# batch 16) at 640: the backbone built for 640 (position table and rotary grid of 40x40), training scale
# (2560, 640) with 640 crops and padding, test scale (2560, 640), slide windows of 640 with stride 426, UperNet and
# auxiliary FCN head 1536 wide. --tta scales the 640 test scale by the 512 recipe's ratios (the authors publish no
# multi-scale test at 640).
_base_ = ["./eva02_l_upernet_ade20k_512.py"]
crop_size = (640, 640)
train_scale = (2560, 640)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(backbone_overrides=dict(img_size=640)),
    decode_head=dict(channels=1536),
    auxiliary_head=dict(channels=1536),
    test_cfg=dict(crop_size=crop_size, stride=(426, 426)),
)
# the 512 pipelines with the 640 sizes (the authors' _base_/datasets/ade20k_640x640.py)
pipeline_sizes = dict(
    RandomResize=dict(scale=train_scale), RandomCrop=dict(crop_size=crop_size), Resize=dict(scale=train_scale)
)
train_pipeline = [dict(step, **pipeline_sizes.get(step.type, {})) for step in _base_.train_pipeline]
test_pipeline = [dict(step, **pipeline_sizes.get(step.type, {})) for step in _base_.test_pipeline]
tta_pipeline = [
    dict(step, transforms=[
        [dict(resize, scale=(int(train_scale[0] * r), int(train_scale[1] * r)))
         for resize, r in zip(step.transforms[0], _base_.tta_ratios)],
        *step.transforms[1:],
    ]) if step.type == "TestTimeAug" else step
    for step in _base_.tta_pipeline
]  # fmt: skip
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
