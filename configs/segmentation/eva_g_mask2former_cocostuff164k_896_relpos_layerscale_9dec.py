# EVA-g Mask2Former on COCO-Stuff-164k, the authors' second model set (EVA-01 seg/ README: 53.2 mIoU,
# eva_mask2former_896_80k_cocostuff164k_ss_relpos_layerscale_9dec): the first set's recipe with a BEiT-style
# relative-position bias table (CLS rows) and LayerScale (gamma 1.0) in every ViT block, 9 decoder layers,
# 80k iterations at lr 1e-5.
_base_ = ["./eva_g_mask2former_cocostuff164k_896.py"]
model = dict(
    backbone=dict(backbone_overrides=dict(use_rel_pos_bias=True, layer_scale_init=1.0)),
    decode_head=dict(transformer_decoder=dict(num_layers=9)),
)
optim_wrapper = dict(optimizer=dict(lr=1e-5))
train_cfg = dict(max_iters=80000)
# the poly curve spans the 80k iterations (mmcv poly from iteration 0 to max_iters, 1500 warm-up iterations
# multiplying it); the first set's param_scheduler would end it at 60000 and leave lr 0 for the last 20k
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500 + 1),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=80000 + 1),
]
# the authors' second set: total batch 32 (e.g. 16 GPUs x 2)
auto_scale_lr = dict(base_batch_size=32)
