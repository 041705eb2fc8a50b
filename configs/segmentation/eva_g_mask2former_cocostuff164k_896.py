# EVA-g Mask2Former on COCO-Stuff-164k (paper: 53.4 mIoU): 171 classes, 60k iterations, lr 1.5e-5, batch 32,
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
    backbone=dict(init_cfg=dict(type="Pretrained", checkpoint="checkpoints/eva_psz14.pt")),
    decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
)
optim_wrapper = dict(optimizer=dict(lr=1.5e-5))
# the authors' COCO-Stuff run: warm-up 1500, poly from iteration 0, total batch 32 (e.g. 16 GPUs x 2)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500 + 1),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=60000 + 1),
]
train_cfg = dict(max_iters=60000)
auto_scale_lr = dict(base_batch_size=32)
