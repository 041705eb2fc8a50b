# CPU-sized run of the EVA-02 UperNet code on the synthetic ADE-layout data (tools/make_synthetic_ade.py): the
# tiny EVA-02 preset (4 blocks, width 64, patch 16 at 64 px) with the four-scale pyramid from all four blocks, a
# narrow UperNet and FCN head, slide test at the 64 crop, a short schedule.
_base_ = [
    "./_base_/models/upernet_eva02.py",
    "./_base_/datasets/synthetic_ade.py",
    "./_base_/default_runtime.py",
    "./_base_/schedules/adamw_layer_decay_poly.py",
]
num_classes = 5
embed_dim = 64
model = dict(
    data_preprocessor=dict(size={{_base_.crop_size}}),
    backbone=dict(
        preset="eva02_tiny_seg", backbone_overrides=dict(drop_path_rate=0.0), out_indices=(0, 1, 2, 3)
    ),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=32, num_classes=num_classes),
    auxiliary_head=dict(in_channels=embed_dim, channels=16, num_classes=num_classes),
    test_cfg=dict(crop_size={{_base_.crop_size}}, stride=(43, 43)),
)
optim_wrapper = dict(
    optimizer=dict(lr=1e-3), paramwise_cfg=dict(layer_decay_rate=0.9), clip_grad=dict(max_norm=1.0)
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=20),
]
train_cfg = dict(max_iters=150, val_interval=150)
default_hooks = dict(
    logger=dict(interval=20), checkpoint=dict(interval=50), visualization=dict(type="SegVisualizationHook")
)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
