# CPU-sized run of the same code on the synthetic ADE-layout data (tools/make_synthetic_ade.py): the tiny EVA
# preset in the ViT-Adapter, a narrow Mask2Former head, whole-image inference, a short schedule.
_base_ = [
    "./_base_/models/mask2former_eva_adapter.py",
    "./_base_/datasets/synthetic_ade.py",
    "./_base_/default_runtime.py",
    "./_base_/schedules/adamw_layer_decay_poly.py",
]
num_classes = 5
embed_dim = 64
feat_width = 64
model = dict(
    data_preprocessor=dict(size={{_base_.crop_size}}),
    backbone=dict(
        preset="eva_tiny_seg",
        backbone_overrides=dict(drop_path_rate=0.0, use_act_checkpoint=False),
        adapter=dict(conv_inplane=16, deform_num_heads=4),
        norm_cfg=dict(type="GN", num_groups=8),
    ),
    decode_head=dict(
        in_channels=[embed_dim] * 4,
        feat_channels=feat_width,
        out_channels=feat_width,
        num_classes=num_classes,
        num_queries=8,
        pixel_decoder=dict(
            norm_cfg=dict(type="GN", num_groups=8),
            encoder=dict(
                num_layers=1,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=feat_width, num_heads=4),
                    ffn_cfg=dict(embed_dims=feat_width, feedforward_channels=feat_width * 2),
                ),
            ),
            positional_encoding=dict(num_feats=feat_width // 2),
        ),
        positional_encoding=dict(num_feats=feat_width // 2),
        transformer_decoder=dict(
            num_layers=2,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=feat_width, num_heads=4),
                cross_attn_cfg=dict(embed_dims=feat_width, num_heads=4),
                ffn_cfg=dict(embed_dims=feat_width, feedforward_channels=feat_width * 2),
            ),
        ),
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1]),
        train_cfg=dict(num_points=256),
    ),
    test_cfg=dict(_delete_=True, mode="whole"),
)
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=1.0))
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
