# AdamW with layer-wise lr decay and a poly schedule (EVA segmentation). The ADE20K lr and length are the
# defaults; COCO-Stuff overrides optim_wrapper.optimizer.lr, the warm-up and train_cfg.max_iters. The poly
# schedule's "end" is train_cfg.max_iters + 1 (see below).
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=2.5e-5, betas=(0.9, 0.999), weight_decay=0.05),
    constructor="LayerDecayOptimWrapperConstructor",
    # scheme "eva": the authors' groups (decode-head queries/embeddings in layer 0, 2-D embeddings decayed)
    paramwise_cfg=dict(layer_decay_rate=0.95, scheme="eva"),
)
# the authors' mmcv "poly" policy with linear warm-up (ratio 1e-6): the poly curve runs from iteration 0 to
# max_iters and the warm-up factor multiplies it, lr(t) = base * (1 - t / T) * (1e-6 + (1 - 1e-6) * min(t / W, 1));
# both schedulers start at 0, and mmengine multiplies their factors. ADE20K: W = 500, T = 20000. mmengine's
# linear and poly schedulers reach their final value at "end - 1", mmcv's at W and T: hence the "+ 1".
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=500 + 1),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=20000 + 1),
]
# IterBasedTrainLoop plus a clean stop on SIGINT/SIGTERM (checkpoint, then exit) and a NaN-loss check
train_cfg = dict(type="CheckedIterBasedTrainLoop", max_iters=20000, val_interval=2000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
# published total batch: 64 images per step (e.g. 32 GPUs x 2); lr is not rescaled unless enabled
auto_scale_lr = dict(enable=False, base_batch_size=64)
