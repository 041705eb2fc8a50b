"""The authors' pre-training recipe (EVA-01/eva: modeling_pretrain.py, datasets.py, run_eva_pretraining.py):
CLIP input normalisation, EVA-g initialisation, weight decay on the mask token, and continuing from an EVA MIM
checkpoint with its lm_head."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from timm.data.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from eva_transfer import CheckpointError, load_checkpoint
from eva_transfer.pretrain import build_student, load_pretrain_config
from eva_transfer.pretrain.build import build_models
from eva_transfer.pretrain.objective import param_groups

REPO = Path(__file__).resolve().parents[2]
EVA_G = REPO / "configs" / "pretrain" / "eva_g_clip_l14.py"
EVA_B = REPO / "configs" / "pretrain" / "eva_b_clip_l14.py"
TINY = REPO / "configs" / "pretrain" / "eva_tiny_cpu.py"


@pytest.mark.parametrize("path", [EVA_G, EVA_B, TINY], ids=lambda p: p.stem)
def test_student_input_is_clip_normalised(path):
    data = load_pretrain_config(path)["data"]
    assert tuple(data["mean"]) == pytest.approx(OPENAI_CLIP_MEAN, abs=1e-9)
    assert tuple(data["std"]) == pytest.approx(OPENAI_CLIP_STD, abs=1e-9)


def _truncated_std(std: float) -> float:
    """Standard deviation of N(0, std^2) cut at +-std: std * sqrt(1 - 2 phi(1) / (2 Phi(1) - 1))."""
    phi = math.exp(-0.5) / math.sqrt(2 * math.pi)
    mass = math.erf(1 / math.sqrt(2))
    return std * math.sqrt(1 - 2 * phi / mass)


def test_eva_g_init_is_the_authors():
    cfg = load_pretrain_config(EVA_G)
    assert (cfg["model"]["init_mode"], cfg["model"]["init_std"]) == ("eva", 0.015)
    # the published recipe on the CPU preset: built through the trainer, as a run builds it
    tiny = load_pretrain_config(TINY)
    assert (tiny["model"]["init_mode"], tiny["model"]["init_std"]) == ("eva", 0.015)  # inherited
    torch.manual_seed(0)
    student, _ = build_models(tiny, torch.device("cpu"))
    vit = student.backbone
    std = 0.015

    def check(name, w, bound):
        w = w.detach().flatten()
        assert w.abs().max().item() <= bound * (1 + 1e-6), f"{name}: beyond +-{bound}"
        if w.numel() >= 4096:
            assert w.std().item() == pytest.approx(_truncated_std(bound), rel=0.06), name

    for name in ("pos_embed", "cls_token", "mask_token"):
        check(name, getattr(vit, name), std)
    check("patch_embed.proj.weight", vit.patch_embed.proj.weight, std)
    check("lm_head.weight", student.lm_head.weight, std)
    for i, block in enumerate(vit.blocks):
        check(f"blocks.{i}.attn.qkv.weight", block.attn.qkv.weight, std)
        check(f"blocks.{i}.mlp.fc1.weight", block.mlp.fc1.weight, std)
        rescaled = std / math.sqrt(2 * (i + 1))
        check(f"blocks.{i}.attn.proj.weight", block.attn.proj.weight, rescaled)
        check(f"blocks.{i}.mlp.fc2.weight", block.mlp.fc2.weight, rescaled)
        assert block.attn.proj.bias.abs().max() == 0 and block.mlp.fc2.bias.abs().max() == 0
    # the std of a rescaled block is visibly smaller: the rescale is not lost in the tolerance
    fc2 = vit.blocks[-1].mlp.fc2.weight.std().item()
    assert fc2 < 0.8 * _truncated_std(std)


def _authors_no_decay(name: str, shape) -> bool:
    """EVA-01/eva/optim_factory.py on the authors' names (no ``backbone.`` prefix); skip list from the model's
    ``no_weight_decay()``: ``pos_embed`` and ``cls_token``."""
    return len(shape) == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")


def test_weight_decay_groups_are_the_authors_mask_token_decayed():
    cfg = load_pretrain_config(EVA_G)
    with torch.device("meta"):
        student = build_student(
            cfg["model"]["preset"],
            cfg["model"]["target_dim"],
            init_mode=cfg["model"]["init_mode"],
            init_std=cfg["model"]["init_std"],
        )
    groups = param_groups(student, cfg["optim"])
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    params = dict(student.named_parameters())
    assert set(wd) == set(params)
    for name, p in params.items():
        bare = name[len("backbone.") :] if name.startswith("backbone.") else name
        expected = 0.0 if _authors_no_decay(bare, p.shape) else 0.05
        assert wd[name] == expected, name
    assert wd["backbone.mask_token"] == 0.05
    assert wd["backbone.pos_embed"] == wd["backbone.cls_token"] == 0.0
    assert wd["lm_head.weight"] == 0.05 and wd["backbone.blocks.0.attn.q_bias"] == 0.0


# --- continuing from an EVA MIM checkpoint: lm_head kept, predictions equal to the authors' model ---------------

DIM, DEPTH, HEADS, MLP, PATCH, GRID, OUT = 64, 4, 4, 128, 14, 4, 32


def _mim_state_dict(seed: int = 3) -> dict:
    """A random checkpoint in the layout of the authors' VisionTransformerForMaskedImageModeling."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "cls_token": r(1, 1, DIM),
        "mask_token": r(1, 1, DIM),
        "pos_embed": r(1, GRID * GRID + 1, DIM),
        "patch_embed.proj.weight": r(DIM, 3, PATCH, PATCH, scale=0.02),
        "patch_embed.proj.bias": r(DIM),
        "norm.weight": 1 + r(DIM),
        "norm.bias": r(DIM),
        "lm_head.weight": r(OUT, DIM),
        "lm_head.bias": r(OUT),
    }
    for i in range(DEPTH):
        p = f"blocks.{i}."
        for k, shape in {
            "norm1.bias": (DIM,),
            "attn.qkv.weight": (3 * DIM, DIM),
            "attn.q_bias": (DIM,),
            "attn.v_bias": (DIM,),
            "attn.proj.weight": (DIM, DIM),
            "attn.proj.bias": (DIM,),
            "norm2.bias": (DIM,),
            "mlp.fc1.weight": (MLP, DIM),
            "mlp.fc1.bias": (MLP,),
            "mlp.fc2.weight": (DIM, MLP),
            "mlp.fc2.bias": (DIM,),
        }.items():
            sd[p + k] = r(*shape)
        sd[p + "norm1.weight"] = 1 + r(DIM)
        sd[p + "norm2.weight"] = 1 + r(DIM)
    return sd


def _authors_masked_predictions(sd: dict, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The authors' forward (modeling_pretrain.py), written from its equations: patch embedding, masked tokens
    replaced by the mask token, CLS, absolute position, pre-norm blocks (qkv bias = q_bias, 0, v_bias), final norm,
    lm_head on the masked patch tokens."""
    F = torch.nn.functional
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    w = mask.unsqueeze(-1).to(x.dtype)
    x = x * (1 - w) + sd["mask_token"] * w
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    b, n, c = x.shape
    hd = c // HEADS
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(c), sd[p + "attn.v_bias"]])
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], bias).reshape(b, n, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, c)
        x = x + F.linear(h, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"]
        )
        x = x + h + sd[p + "mlp.fc2.bias"]
    x = F.layer_norm(x, (c,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)[:, 1:]
    return F.linear(x[mask], sd["lm_head.weight"], sd["lm_head.bias"])


def _tiny_student(out=OUT):
    return build_student(
        "eva_tiny", out, patch_size=PATCH, img_size=PATCH * GRID, mlp_dim=MLP, drop_path_rate=0.0
    ).eval()


def test_eva_mim_checkpoint_continues_with_its_lm_head(tmp_path):
    sd = _mim_state_dict()
    path = tmp_path / "eva_mim.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    student = _tiny_student()
    report = load_checkpoint(student, path, verbose=False)
    assert "lm_head.weight" in report.loaded and "lm_head.bias" in report.loaded
    assert not any(k.startswith("lm_head") for k in report.dropped)
    assert not report.missing and not report.unexpected
    torch.testing.assert_close(student.lm_head.weight, sd["lm_head.weight"], rtol=0, atol=0)

    g = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, PATCH * GRID, PATCH * GRID, generator=g)
    mask = torch.rand(2, GRID * GRID, generator=g) < 0.4
    mask[:, 0] = True
    with torch.no_grad():
        got = student(images, mask)[mask]
        expected = _authors_masked_predictions(sd, images, mask)
    assert got.shape == expected.shape
    rel = (got - expected).norm() / expected.norm()
    assert rel.item() <= 1e-5, f"relative difference {rel.item():.2e}"


def test_whole_student_state_dict_round_trip_keeps_lm_head():
    source = _tiny_student()
    with torch.no_grad():
        source.lm_head.weight.normal_()
    target = _tiny_student()
    report = load_checkpoint(target, source.state_dict(), verbose=False)
    assert "lm_head.weight" in report.loaded and not report.unexpected
    torch.testing.assert_close(target.lm_head.weight, source.lm_head.weight, rtol=0, atol=0)


def test_lm_head_of_another_width_is_a_clear_error():
    student = _tiny_student(out=OUT * 2)
    with pytest.raises(CheckpointError, match=r"lm_head\.weight.*\[32, 64\].*\[64, 64\]"):
        load_checkpoint(student, {"model": _mim_state_dict()}, verbose=False)


def test_backbone_only_models_still_drop_lm_head():
    from eva_transfer import build_eva_vit

    vit = build_eva_vit("eva_tiny", patch_size=PATCH, img_size=PATCH * GRID, mlp_dim=MLP)
    report = load_checkpoint(vit, {"model": _mim_state_dict()}, verbose=False)
    assert "lm_head.weight" in report.dropped and "lm_head.weight" not in report.loaded
