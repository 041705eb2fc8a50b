# EVA-g Mask2Former on COCO-Stuff-164k (paper: 53.4 mIoU): 171 classes, 60k iterations, lr 1.5e-5,
# backbone initialised from the EVA MIM checkpoint.
_base_ = [
    "./_base_/models/mask2former_eva_adapter.py",
    "./_base_/datasets/coco_stuff164k.py",
    "./_base_/default_runtime.py",
    "./_base_/schedules/adamw_layer_decay_poly.py",
]
num_classes = 171
model = dict(
    data_preprocessor=dict(size={{_base_.crop_size}}),
    test_cfg=dict(crop_size={{_base_.crop_size}}),
    backbone=dict(init_checkpoint="checkpoints/eva_psz14.pt"),
    decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
)
optim_wrapper = dict(optimizer=dict(lr=1.5e-5))
train_cfg = dict(max_iters=60000)
