# EVA-02 B + UperNet on ADE20K, 512 crops, 60k iterations: the authors' eva02_B_ade_seg_upernet_sz512
# (EVA-02/seg/configs/eva02/upernet/upernet_eva02_base_12_512_slide_60k.py; README: 55.3 mIoU single scale).
# Blocks 3, 5, 7, 11 make the pyramid; UperNet width 768; AdamW lr 6e-5, weight decay 0.05, layer decay 0.85;
# linear warm-up over 1500 iterations from 1e-6, then poly (power 1, to 0); drop path 0.15; 8 images per GPU on
# 4 GPUs (batch 32); slide test 512 windows, stride 341. The authors train in fp16: add --amp.
_base_ = [
    "./_base_/models/upernet_eva02.py",
    "./_base_/datasets/ade20k_512.py",
    "./_base_/default_runtime.py",
    "./_base_/schedules/adamw_layer_decay_poly.py",
]
model = dict(
    backbone=dict(init_cfg=dict(type="Pretrained", checkpoint="checkpoints/eva02_B_pt_in21k_p14to16.pt")),
)
optim_wrapper = dict(
    optimizer=dict(lr=6e-5, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(layer_decay_rate=0.85, scheme="eva"),
)
warmup_iters = 1500
max_iters = 60000
# mmcv's poly with linear warm-up (ratio 1e-6): both curves from iteration 0, factors multiplied (see the base)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters + 1),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(max_iters=max_iters, val_interval=1000)
train_dataloader = dict(batch_size=8)
default_hooks = dict(
    checkpoint=dict(interval=1000, max_keep_ckpts=4, save_best="mIoU", rule="greater"),
)
auto_scale_lr = dict(enable=False, base_batch_size=32)
