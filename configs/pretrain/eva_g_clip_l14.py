"""EVA-g masked image modelling with OpenAI CLIP ViT-L/14 features: the published EVA-01 settings.

Paper: 1.0B-parameter EVA-g (patch 14, 224 input, 16x16 grid), 105 of 256 patches masked block-wise, targets
are CLIP-L/14 patch tokens after ln_post and the projection (768-d), batch 4096 for 150 epochs on 29.6M images,
fp16 with ZeRO stage 1. Launch with torchrun on as many GPUs as you have (the global batch stays 4096).
"""

config = dict(
    model=dict(backbone="eva_g", target_dim=768, drop_path_rate=0.1, use_act_checkpoint=False),
    teacher=dict(family="timm", name="vit_large_patch14_clip_224.openai", pretrained=True),
    mask=dict(num_patches=105, min_patches=16, min_aspect=0.3, max_aspect=None, max_tries=10),
    data=dict(img_size=224, scale=(0.2, 1.0), hflip=0.5, interpolation="bicubic", workers=8),
    optim=dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05, clip_grad=3.0, zero=True),
    schedule=dict(epochs=150, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5),
    train=dict(
        batch_size=4096, amp="fp16", output_dir="output/pretrain/eva_g_clip_l14", checkpoint_every=1000
    ),
)
