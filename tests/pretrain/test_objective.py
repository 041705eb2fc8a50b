"""Student, teacher and the masked cosine objective."""

from __future__ import annotations

import pytest
import torch

from eva_transfer.pretrain import build_student, build_teacher, check_target_width, masked_cosine_loss
from eva_transfer.pretrain.config import load_pretrain_config
from eva_transfer.pretrain.trainer import build_models

TINY_TEACHER = dict(
    family="timm",
    name="vit_base_patch16_clip_224.openai",
    pretrained=False,
    img_size=128,
    kwargs=dict(embed_dim=48, depth=2, num_heads=2, num_classes=32),
)


def test_loss_ignores_visible_patches():
    pred = torch.randn(2, 16, 8, requires_grad=True)
    target = torch.randn(2, 16, 8)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, 7:9] = True
    loss = masked_cosine_loss(pred, target, mask)
    perturbed = target.clone()
    perturbed[~mask] = torch.randn(int((~mask).sum()), 8) * 100
    assert torch.equal(masked_cosine_loss(pred, perturbed, mask), loss)
    changed = target.clone()
    changed[0, 0] = -changed[0, 0]
    assert not torch.equal(masked_cosine_loss(pred, changed, mask), loss)
    loss.backward()
    assert pred.grad[~mask].abs().max() == 0 and pred.grad[mask].abs().max() > 0
    # the value: mean negative cosine over the 7 masked patches
    ref = -torch.nn.functional.cosine_similarity(pred[mask], target[mask], dim=-1).mean()
    torch.testing.assert_close(loss, ref)
    # a normalizer replaces the local count (distributed normalisation)
    torch.testing.assert_close(masked_cosine_loss(pred, target, mask, normalizer=14.0), ref / 2)


def test_loss_is_fp32_for_half_inputs():
    pred = torch.randn(1, 4, 8).bfloat16()
    target = torch.randn(1, 4, 8).bfloat16()
    loss = masked_cosine_loss(pred, target, torch.ones(1, 4, dtype=torch.bool))
    assert loss.dtype == torch.float32


def test_teacher_tokens_are_timm_clip_outputs_after_norm_and_projection():
    teacher = build_teacher(**TINY_TEACHER)
    assert teacher.out_dim == 32 and teacher.patch_size == 16 and teacher.img_size == (128, 128)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.tower.training
    images = torch.rand(2, 3, 128, 128)
    tokens = teacher(images)
    assert tokens.shape == (2, 64, 32)
    # reference: timm's own CLIP image embedding (projected CLS after the final norm) equals the CLS row of the
    # same token path, so the per-patch rows went through the same norm and projection
    tower = teacher.tower
    with torch.no_grad():
        embedding = tower(teacher.normalize(images))
        prefix = tower.num_prefix_tokens
        tower.num_prefix_tokens = 0
        try:
            all_tokens, _ = teacher._tokens(teacher.normalize(images))
        finally:
            tower.num_prefix_tokens = prefix
    torch.testing.assert_close(all_tokens[:, 0], embedding)
    torch.testing.assert_close(all_tokens[:, 1:], tokens)


def test_teacher_grid_matched_to_student():
    teacher = build_teacher(**TINY_TEACHER)
    images = torch.rand(1, 3, 128, 128)
    same = teacher(images, grid=(8, 8))
    torch.testing.assert_close(same, teacher(images))
    smaller = teacher(images, grid=(4, 4))  # e.g. a patch-32 student
    assert smaller.shape == (1, 16, 32)
    # bilinear 2x downsampling without corner alignment averages each 2x2 block of teacher tokens
    full = same.reshape(1, 8, 8, 32)
    pooled = full.reshape(1, 4, 2, 4, 2, 32).mean(dim=(2, 4)).reshape(1, 16, 32)
    torch.testing.assert_close(smaller, pooled)
    # a crop of another size is resized to the teacher's input size first
    assert teacher(torch.rand(1, 3, 96, 96), grid=(6, 6)).shape == (1, 36, 32)


def test_student_layout_and_forward():
    student = build_student("eva_tiny", 32, img_size=128)
    vit = student.backbone
    assert vit.cls_token is not None and vit.mask_token is not None and vit.embed_dim == 64 and vit.depth == 4
    images = torch.rand(2, 3, 128, 128)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, :10] = True
    out = student(images, mask)
    assert out.shape == (2, 64, 32)
    # the mask token changes the masked positions' input
    assert not torch.allclose(out, student(images, torch.zeros_like(mask)))
    with pytest.raises(ValueError, match="pre-training layout"):
        build_student("eva_tiny_seg", 32)


def test_teacher_width_mismatch_is_a_clear_error(tmp_path):
    teacher = build_teacher(**TINY_TEACHER)
    with pytest.raises(ValueError, match=r"lm_head\) projects to 768 .* outputs 32-d"):
        check_target_width(768, teacher)
    cfg = load_pretrain_config(
        None,
        [f"teacher.{k}={v!r}" for k, v in TINY_TEACHER.items()]
        + ["model.backbone='eva_tiny'", "model.target_dim=768"],
    )
    with pytest.raises(ValueError, match="model.target_dim to 32"):
        build_models(cfg, torch.device("cpu"))


def test_open_clip_teacher_needs_the_package():
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="open_clip_torch"):
            build_teacher(family="open_clip", name="ViT-L-14", pretrained=False)
    else:
        pytest.skip("open_clip is installed")


class _OpenCLIPLikeTower(torch.nn.Module):
    """The interface of open_clip's vision ``VisionTransformer`` (conv1, class token, ln_pre, transformer, ln_post
    applied before pooling unless ``final_ln_after_pool``, ``proj`` after it, ``output_tokens``), for a test
    without the package."""

    def __init__(self, width=24, out=12, patch=16, image=64, final_ln_after_pool=False):
        super().__init__()
        self.image_size, self.grid_size = (image, image), (image // patch, image // patch)
        self.output_tokens, self.final_ln_after_pool = False, final_ln_after_pool
        self.conv1 = torch.nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = torch.nn.Parameter(torch.randn(width))
        self.ln_pre = torch.nn.LayerNorm(width)
        self.transformer = torch.nn.TransformerEncoderLayer(width, 2, 48, batch_first=True)
        self.ln_post = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(torch.randn(width, out))
        torch.nn.init.normal_(self.ln_post.bias)

    def forward(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        x = self.transformer(self.ln_pre(x))
        if self.final_ln_after_pool:
            pooled, tokens = self.ln_post(x[:, 0]), x[:, 1:]
        else:
            x = self.ln_post(x)
            pooled, tokens = x[:, 0], x[:, 1:]
        pooled = pooled @ self.proj
        return (pooled, tokens) if self.output_tokens else pooled


@pytest.mark.parametrize("final_ln_after_pool", [False, True])
def test_open_clip_style_tower_tokens(final_ln_after_pool):
    from eva_transfer.pretrain import CLIPTeacher
    from eva_transfer.pretrain.teacher import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    tower = _OpenCLIPLikeTower(final_ln_after_pool=final_ln_after_pool)
    teacher = CLIPTeacher(tower, "open_clip", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert (teacher.out_dim, teacher.patch_size, teacher.img_size) == (12, 16, (64, 64))
    images = torch.rand(2, 3, 64, 64)
    out = teacher(images)
    assert out.shape == (2, 16, 12) and tower.output_tokens is False
    # reference: every token through the final norm and the projection, the way the pooled embedding is made
    with torch.no_grad():
        x = tower.conv1(teacher.normalize(images)).flatten(2).transpose(1, 2)
        x = torch.cat([tower.class_embedding.expand(2, 1, -1), x], dim=1)
        ref = tower.ln_post(tower.transformer(tower.ln_pre(x)))[:, 1:] @ tower.proj
    torch.testing.assert_close(out, ref)
