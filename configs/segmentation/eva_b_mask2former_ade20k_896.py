# EVA-B variant of the ADE20K recipe: 12 blocks of width 768, 12 adapter heads; heads and schedule unchanged.
_base_ = ["./eva_g_mask2former_ade20k_896.py"]
embed_dim = 768
model = dict(
    backbone=dict(
        preset="eva_b_seg",
        backbone_overrides=dict(drop_path_rate=0.1),
        adapter=dict(deform_num_heads=12),
        init_cfg=dict(type="Pretrained", checkpoint="checkpoints/eva_b_psz16.pt"),
    ),
    decode_head=dict(in_channels=[embed_dim] * 4),
)
load_from = None
