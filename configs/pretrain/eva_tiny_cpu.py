"""CPU-sized pre-training: the ``eva_tiny`` backbone (the width/depth/heads of ``eva_tiny_det``/``eva_tiny_seg``)
against a small randomly initialised timm CLIP tower, at 128 px (an 8x8 patch grid). Same code as EVA-g.

Run: ``python tools/pretrain.py --config configs/pretrain/eva_tiny_cpu.py data.root=/path/to/images``
"""

_base_ = "eva_g_clip_l14.py"

config = dict(
    model=dict(preset="eva_tiny", target_dim=None, drop_path_rate=0.1, backbone_overrides=dict(img_size=128)),
    teacher=dict(
        name="vit_base_patch16_clip_224.openai",
        pretrained=False,
        img_size=128,
        kwargs=dict(embed_dim=48, depth=2, num_heads=2, num_classes=32),
    ),
    # 40% of 64 patches; blocks of at least 4 patches (16 of 256 scaled to the smaller grid)
    mask=dict(num_patches=None, ratio=0.4, min_patches=4),
    data=dict(img_size=128, workers=0),
    optim=dict(zero=False),
    schedule=dict(total_steps=300, warmup_steps=20),
    train=dict(
        batch_size=16,
        amp="none",
        output_dir="output/pretrain/eva_tiny_cpu",
        checkpoint_every=100,
        log_every=20,
        tensorboard=False,
        device="cpu",
    ),
)
