"""ViT-B-sized EVA student (``eva_b``, patch 16) with the same CLIP-L/14 teacher and recipe as EVA-g.

The teacher's 16x16 token grid is interpolated to the student's 14x14 grid; 40% of 196 patches are masked.
"""

_base_ = "eva_g_clip_l14.py"

config = dict(
    model=dict(preset="eva_b", init_std=0.02),  # EVA's default std; 0.015 is EVA-g's
    mask=dict(num_patches=None, ratio=0.4),
    optim=dict(zero=False),
    train=dict(output_dir="output/pretrain/eva_b_clip_l14"),
)
