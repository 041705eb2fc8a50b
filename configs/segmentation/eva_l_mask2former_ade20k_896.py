# EVA-L variant of the ADE20K recipe: 24 blocks of width 1024; heads and schedule unchanged.
_base_ = ["./eva_g_mask2former_ade20k_896.py"]
embed_dim = 1024
model = dict(
    backbone=dict(
        preset="eva_l_seg",
        backbone_overrides=dict(drop_path_rate=0.3),
        init_cfg=dict(type="Pretrained", checkpoint="checkpoints/eva_l_psz16.pt"),
    ),
    decode_head=dict(in_channels=[embed_dim] * 4),
)
load_from = None
