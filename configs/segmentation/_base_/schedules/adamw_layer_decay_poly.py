# AdamW with layer-wise lr decay and a poly schedule (EVA segmentation). The ADE20K lr and length are the
# defaults; COCO-Stuff overrides optim_wrapper.optimizer.lr and train_cfg.max_iters. The poly schedule ends at
# train_cfg.max_iters (the runner's default "end").
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=2.5e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor="LayerDecayOptimWrapperConstructor",
    paramwise_cfg=dict(layer_decay_rate=0.95),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=1500),
]
# IterBasedTrainLoop plus a clean stop on SIGINT/SIGTERM (checkpoint, then exit) and a NaN-loss check
train_cfg = dict(type="CheckedIterBasedTrainLoop", max_iters=20000, val_interval=2000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
# published total batch: 64 images per step (e.g. 32 GPUs x 2); lr is not rescaled unless enabled
auto_scale_lr = dict(enable=False, base_batch_size=64)
