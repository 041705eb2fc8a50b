# EVA-g Mask2Former on ADE20K, the authors' second model set (EVA-01 seg/ README: 61.5 single-scale, 62.3 with
# --tta; eva_mask2former_896_40k_coco164k2ade20k_ss_relpos_layerscale_9dec): relative-position bias table
# (CLS rows) and LayerScale (gamma 1.0) in every ViT block, 9 decoder layers, 40k iterations at lr 1e-5 with
# layer decay 0.9, initialised from the second set's COCO-Stuff-164k model.
_base_ = ["./eva_g_mask2former_ade20k_896.py"]
load_from = "work_dirs/eva_g_mask2former_cocostuff164k_896_relpos_layerscale_9dec/iter_80000.pth"
model = dict(
    backbone=dict(backbone_overrides=dict(use_rel_pos_bias=True, layer_scale_init=1.0)),
    decode_head=dict(transformer_decoder=dict(num_layers=9)),
)
optim_wrapper = dict(optimizer=dict(lr=1e-5), paramwise_cfg=dict(layer_decay_rate=0.9))
train_cfg = dict(max_iters=40000)
# the authors' second set: 1500 warm-up iterations, total batch 32 (e.g. 16 GPUs x 2). Their mmcv poly policy counts
# from iteration 0 to max_iters and the linear warm-up multiplies it (as in the first set): "+ 1" because mmengine's
# schedulers reach their final value at end - 1. The earlier schedule (poly from the end of the warm-up, about 3.9%
# higher after it) stays as an option: _base_/schedules/adamw_layer_decay_poly_after_warmup.py, or here
# --cfg-options param_scheduler.0.end=1500 param_scheduler.1.begin=1500 param_scheduler.1.end=40000
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500 + 1),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=40000 + 1),
]
auto_scale_lr = dict(base_batch_size=32)
