# EVA-02 L + UperNet on ADE20K, 512 crops, 80k iterations: the authors' eva02_L_ade_seg_upernet_sz512
# (EVA-02/seg/configs/eva02/upernet/upernet_eva02_large_24_512_slide_80k.py; README: 59.8 mIoU single scale,
# 60.4 multi-scale). Blocks 7, 11, 15, 23 make the pyramid; UperNet width 1024; AdamW lr 4e-5, weight decay
# 0.05, layer decay 0.9; warm-up 1500 iterations; drop path 0.2; 2 images per GPU on 8 GPUs (batch 16).
_base_ = ["./eva02_b_upernet_ade20k_512.py"]
embed_dim = 1024
model = dict(
    backbone=dict(
        preset="eva02_large_seg",
        backbone_overrides=dict(drop_path_rate=0.2),
        out_indices=(7, 11, 15, 23),
        init_cfg=dict(type="Pretrained", checkpoint="checkpoints/eva02_L_pt_m38m_p14to16.pt"),
    ),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=embed_dim),
    auxiliary_head=dict(in_channels=embed_dim),
)
optim_wrapper = dict(optimizer=dict(lr=4e-5), paramwise_cfg=dict(layer_decay_rate=0.9))
max_iters = 80000
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500 + 1),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters + 1),
]
train_cfg = dict(max_iters=max_iters)
train_dataloader = dict(batch_size=2)
default_hooks = dict(checkpoint=dict(max_keep_ckpts=10))
auto_scale_lr = dict(base_batch_size=16)
