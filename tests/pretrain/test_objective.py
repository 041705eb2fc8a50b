"""Student, teacher and the masked cosine objective."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eva_transfer.pretrain import build_student, build_teacher, check_target_width, masked_cosine_loss
from eva_transfer.pretrain.build import build_models
from eva_transfer.pretrain.config import load_pretrain_config

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"

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
        + ["model.preset='eva_tiny'", "model.target_dim=768"],
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


# ----------------------------------------------------------------------------------- the teacher's activation

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _layer_norm(x, weight, bias):
    # EVA-01/eva/clip/model.py LayerNorm: torch's nn.LayerNorm, eps 1e-5
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * weight + bias


def _clip_normalize(images):
    mean = torch.tensor(_CLIP_MEAN, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def _authors_clip_patch_tokens(p: dict, x, patch: int, heads: int, act: str = "quick_gelu"):
    """EVA's teacher written from the authors' CLIP equations (EVA-01/eva/clip/model.py VisionTransformer.forward,
    ResidualAttentionBlock, QuickGELU) for CLIP-normalised images ``x``: conv1 without bias, class token, positional
    embedding, ln_pre, blocks ``x + attn(ln_1(x))``, ``x + c_proj(QuickGELU(c_fc(ln_2(x))))``, class token dropped,
    ln_post, ``@ proj``. ``p`` holds the weights in the authors' names."""
    x = torch.nn.functional.conv2d(x, p["conv1.weight"], stride=patch)
    b, c = x.shape[:2]
    x = x.reshape(b, c, -1).permute(0, 2, 1)
    x = torch.cat([p["class_embedding"].expand(b, 1, c), x], dim=1) + p["positional_embedding"]
    x = _layer_norm(x, p["ln_pre.weight"], p["ln_pre.bias"])
    for i in range(p["layers"]):
        r = f"transformer.resblocks.{i}."
        h = _layer_norm(x, p[r + "ln_1.weight"], p[r + "ln_1.bias"])
        q, k, v = (h @ p[r + "attn.in_proj_weight"].T + p[r + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-2, -1) / (c // heads) ** 0.5, dim=-1) @ v
        a = a.transpose(1, 2).reshape(b, -1, c)
        x = x + a @ p[r + "attn.out_proj.weight"].T + p[r + "attn.out_proj.bias"]
        h = _layer_norm(x, p[r + "ln_2.weight"], p[r + "ln_2.bias"])
        h = h @ p[r + "mlp.c_fc.weight"].T + p[r + "mlp.c_fc.bias"]
        if act == "quick_gelu":
            h = h * torch.sigmoid(1.702 * h)
        else:
            h = 0.5 * h * (1 + torch.erf(h / 2**0.5))
        x = x + h @ p[r + "mlp.c_proj.weight"].T + p[r + "mlp.c_proj.bias"]
    x = _layer_norm(x[:, 1:], p["ln_post.weight"], p["ln_post.bias"])
    return x @ p["proj"]


def _authors_names(tower) -> dict:
    """The timm tower's weights under the authors' CLIP names (the inverse of timm's OpenAI CLIP conversion)."""
    sd = tower.state_dict()
    p = {
        "conv1.weight": sd["patch_embed.proj.weight"],
        "class_embedding": sd["cls_token"].reshape(-1),
        "positional_embedding": sd["pos_embed"][0],
        "ln_pre.weight": sd["norm_pre.weight"],
        "ln_pre.bias": sd["norm_pre.bias"],
        "ln_post.weight": sd["norm.weight"],
        "ln_post.bias": sd["norm.bias"],
        "proj": sd["head.weight"].T,
        "layers": len(tower.blocks),
    }
    for i in range(len(tower.blocks)):
        theirs, ours = f"transformer.resblocks.{i}.", f"blocks.{i}."
        for a, b in [
            ("ln_1", "norm1"),
            ("attn.in_proj_", "attn.qkv."),
            ("attn.out_proj.", "attn.proj."),
            ("ln_2", "norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ]:
            sep = "" if a.endswith(("_", ".")) else "."
            for w in ("weight", "bias"):
                p[theirs + a + sep + w] = sd[ours + b + ("" if b.endswith(".") else ".") + w]
    return p


def test_openai_teacher_targets_equal_the_authors_clip_with_quickgelu():
    teacher = build_teacher(**TINY_TEACHER).double()
    tower = teacher.tower
    assert tower.patch_embed.proj.bias is None  # the authors' conv1 has none
    # random values everywhere (norm affines and biases too), so that every term of the equations shows
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in tower.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) * 0.5)
        tower.head.bias.zero_()  # OpenAI's proj has no bias (timm's conversion writes zeros)
    images = torch.rand(2, 3, 128, 128, generator=gen, dtype=torch.float64)
    heads = tower.blocks[0].attn.num_heads
    ref = _authors_clip_patch_tokens(_authors_names(tower), _clip_normalize(images), 16, heads)
    tokens, grid = teacher._tokens(_clip_normalize(images))
    assert grid == (8, 8) and tokens.dtype == torch.float64
    torch.testing.assert_close(tokens, ref, rtol=1e-10, atol=1e-10)
    # end to end, with the teacher's own normalisation (CLIP's mean/std kept as float32 constants)
    out = teacher(images)
    assert out.shape == (2, 64, 32)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # the activation matters far beyond these tolerances: GELU in the same equations gives other targets
    gelu = _authors_clip_patch_tokens(_authors_names(tower), _clip_normalize(images), 16, heads, act="gelu")
    assert (gelu - ref).abs().max() > 1e-2
    assert teacher.act == "quick_gelu"
    assert all(type(blk.mlp.act).__name__ == "QuickGELU" for blk in tower.blocks)


def test_teacher_activation_follows_the_pretrained_tag():
    from eva_transfer.pretrain.teacher import teacher_activation

    assert teacher_activation("timm", "vit_large_patch14_clip_224.openai") == "quick_gelu"
    assert teacher_activation("timm", "vit_large_patch14_clip_quickgelu_224.openai") == "quick_gelu"
    assert teacher_activation("timm", "vit_large_patch14_clip_224.metaclip_400m") == "quick_gelu"
    assert teacher_activation("timm", "vit_large_patch14_clip_224.laion2b") == "gelu"
    assert teacher_activation("timm", "vit_large_patch14_clip_224.openai_ft_in1k") == "gelu"
    assert teacher_activation("open_clip", "ViT-L-14", "openai") == "quick_gelu"
    assert teacher_activation("open_clip", "ViT-L-14-quickgelu", "dfn2b") == "quick_gelu"
    assert teacher_activation("open_clip", "ViT-L-14", "laion2b_s32b_b82k") is None  # the model config's own

    small = dict(TINY_TEACHER, kwargs=dict(TINY_TEACHER["kwargs"], depth=1))
    laion = build_teacher(**dict(small, name="vit_base_patch16_clip_224.laion2b"))
    assert laion.act == "gelu" and type(laion.tower.blocks[0].mlp.act).__name__ == "GELU"
    # explicit choice, either way
    assert build_teacher(**small, act_layer="gelu").act == "gelu"
    laion_quick = build_teacher(
        **dict(small, name="vit_base_patch16_clip_224.laion2b"), act_layer="quick_gelu"
    )
    assert laion_quick.act == "quick_gelu"
    with pytest.raises(ValueError, match="act_layer must be one of"):
        build_teacher(**small, act_layer="relu")
    with pytest.raises(ValueError, match="disagree"):
        build_teacher(**dict(small, kwargs=dict(small["kwargs"], act_layer="gelu")), act_layer="quick_gelu")


def test_configured_teachers_use_quickgelu():
    from eva_transfer.pretrain.config import ConfigError

    cfg = load_pretrain_config(REPO_CONFIGS / "eva_g_clip_l14.py")
    t = cfg["teacher"]
    assert t["name"].endswith(".openai") and t["act_layer"] is None
    teacher = build_teacher(
        family=t["family"], name=t["name"], pretrained=False, kwargs=dict(depth=1), act_layer=t["act_layer"]
    )
    assert teacher.act == "quick_gelu" and type(teacher.tower.blocks[0].mlp.act).__name__ == "QuickGELU"
    tiny = load_pretrain_config(REPO_CONFIGS / "eva_tiny_cpu.py", ["model.backbone_overrides.depth=1"])
    _, tiny_teacher = build_models(tiny, torch.device("cpu"))
    assert tiny_teacher.act == "quick_gelu"
    with pytest.raises(ConfigError, match="teacher.act_layer"):
        load_pretrain_config(REPO_CONFIGS / "eva_tiny_cpu.py", ["teacher.act_layer='relu'"])


def test_open_clip_openai_teacher_is_built_with_quickgelu(monkeypatch):
    import sys
    import types

    calls = []

    def create_model(name, pretrained=None, **kwargs):
        calls.append((name, pretrained, kwargs))
        return types.SimpleNamespace(visual=_OpenCLIPLikeTower())

    monkeypatch.setitem(sys.modules, "open_clip", types.SimpleNamespace(create_model=create_model))
    build_teacher(family="open_clip", name="ViT-L-14", pretrained="openai")
    build_teacher(family="open_clip", name="ViT-L-14", pretrained="laion2b_s32b_b82k")
    build_teacher(family="open_clip", name="ViT-L-14", pretrained="laion2b_s32b_b82k", act_layer="quick_gelu")
    assert calls[0] == ("ViT-L-14", "openai", {"force_quick_gelu": True})
    assert calls[1] == ("ViT-L-14", "laion2b_s32b_b82k", {})
    assert calls[2][2] == {"force_quick_gelu": True}
