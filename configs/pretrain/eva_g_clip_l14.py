"""EVA-g masked image modelling with OpenAI CLIP ViT-L/14 features: the published EVA-01 settings.

Paper: 1.0B-parameter EVA-g (patch 14, 224 input, 16x16 grid), 105 of 256 patches masked block-wise, targets
are CLIP-L/14 patch tokens after ln_post and the projection (768-d), batch 4096 for 150 epochs on 29.6M images,
fp16 with ZeRO stage 1. Student input normalised with CLIP's mean/std; EVA's initialisation (std 0.015, cut at
+-1 std, residual projections rescaled per block); weight decay on the mask token. Launch with torchrun on as many GPUs as you have (the global batch stays 4096).
"""

config = dict(
    # EVA's MIM initialisation with EVA-g's std (eva_g_patch14_224 in EVA-01/eva/modeling_pretrain.py)
    model=dict(
        preset="eva_g",
        target_dim=768,
        drop_path_rate=0.1,
        use_act_checkpoint=False,
        init_mode="eva",
        init_std=0.015,
    ),
    # OpenAI CLIP ViT-L/14 with its QuickGELU MLPs (act_layer None: chosen from the "openai" tag), as EVA's
    # teacher (EVA-01/eva/clip/model.py); targets after ln_post and the projection, 768-d
    teacher=dict(family="timm", name="vit_large_patch14_clip_224.openai", pretrained=True, act_layer=None),
    mask=dict(num_patches=105, min_patches=16, min_aspect=0.3, max_aspect=None, max_tries=10),
    # the student sees CLIP-normalised images, as the teacher (EVA-01/eva/datasets.py)
    data=dict(
        img_size=224,
        scale=(0.2, 1.0),
        hflip=0.5,
        interpolation="bicubic",
        mean=(0.48145466, 0.4578275, 0.40821073),
        std=(0.26862954, 0.26130258, 0.27577711),
        workers=8,
    ),
    # weight decay on the mask token too; not on pos_embed, cls_token, 1-D parameters and biases
    optim=dict(
        lr=1e-3,
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=0.05,
        clip_grad=3.0,
        no_decay_names=("pos_embed", "cls_token"),
        zero=True,
    ),
    schedule=dict(epochs=150, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5),
    train=dict(
        batch_size=4096, amp="fp16", output_dir="output/pretrain/eva_g_clip_l14", checkpoint_every=1000
    ),
)
