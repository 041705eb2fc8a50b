"""Configs: the published EVA-g settings, inheritance, overrides and typo errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from eva_transfer import PRESETS
from eva_transfer.pretrain import ConfigError, load_config, lr_at_step

REPO = Path(__file__).resolve().parents[2]
EVA_G = REPO / "configs" / "pretrain" / "eva_g_clip_l14.py"
TINY_CONFIG = REPO / "configs" / "pretrain" / "eva_tiny_cpu.py"


def test_eva_g_config_is_the_published_recipe():
    cfg = load_config(EVA_G)
    assert cfg["model"]["backbone"] == "eva_g" and cfg["model"]["target_dim"] == 768
    assert cfg["model"]["drop_path_rate"] == 0.1
    assert cfg["teacher"]["name"] == "vit_large_patch14_clip_224.openai" and cfg["teacher"]["pretrained"]
    assert cfg["mask"]["num_patches"] == 105 and cfg["mask"]["min_patches"] == 16
    assert cfg["mask"]["min_aspect"] == 0.3 and cfg["mask"]["max_tries"] == 10
    assert (
        cfg["data"]["img_size"] == 224
        and tuple(cfg["data"]["scale"]) == (0.2, 1.0)
        and cfg["data"]["hflip"] == 0.5
    )
    o = cfg["optim"]
    assert (o["lr"], tuple(o["betas"]), o["eps"], o["weight_decay"], o["clip_grad"]) == (
        1e-3,
        (0.9, 0.98),
        1e-6,
        0.05,
        3.0,
    )
    assert o["zero"] is True
    assert cfg["schedule"]["epochs"] == 150 and cfg["schedule"]["warmup_epochs"] == 2
    assert cfg["train"]["batch_size"] == 4096 and cfg["train"]["amp"] == "fp16"
    g = PRESETS["eva_g"]
    assert (g["patch_size"], g["depth"], g["embed_dim"], g["img_size"]) == (14, 40, 1408, 224)  # 16x16 grid


def test_tiny_config_inherits_and_matches_the_tiny_backbones():
    cfg = load_config(TINY_CONFIG)
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["betas"] == (0.9, 0.98)  # inherited
    assert cfg["model"]["backbone"] == "eva_tiny" and cfg["train"]["amp"] == "none"
    shape = ("embed_dim", "depth", "num_heads", "mlp_dim", "patch_size")
    for other in ("eva_tiny_det", "eva_tiny_seg"):
        assert all(PRESETS["eva_tiny"][k] == PRESETS[other][k] for k in shape)


def test_overrides_and_typos(tmp_path):
    cfg = load_config(
        TINY_CONFIG,
        [
            "optim.lr=5e-4",
            "data.root=/data/x",
            "optim.zero=true",
            "model.backbone_overrides={'depth': 2}",
            "teacher.kwargs.depth=1",
        ],
    )
    assert cfg["optim"]["lr"] == 5e-4 and cfg["data"]["root"] == "/data/x" and cfg["optim"]["zero"] is True
    assert cfg["model"]["backbone_overrides"] == {"img_size": 128, "depth": 2}
    assert cfg["teacher"]["kwargs"]["depth"] == 1 and cfg["teacher"]["kwargs"]["embed_dim"] == 48
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        load_config(TINY_CONFIG, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        load_config(TINY_CONFIG, ["train.batchsize=8"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(TINY_CONFIG, ["optim.lr"])
    bad = tmp_path / "bad.py"
    bad.write_text(f"_base_ = {str(TINY_CONFIG)!r}\nconfig = dict(schedule=dict(warmup_step=3))\n")
    with pytest.raises(
        ConfigError,
        match=r"bad.py: unknown config key 'schedule.warmup_step'; did you mean "
        r"'schedule.warmup_steps'",
    ):
        load_config(bad)


def test_lr_schedule():
    kw = dict(total=100, warmup=10, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
    assert lr_at_step(0, **kw) == pytest.approx(1e-6)
    assert lr_at_step(5, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert lr_at_step(10, **kw) == pytest.approx(1e-3)
    assert lr_at_step(55, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert lr_at_step(100, **kw) == pytest.approx(1e-5)
    values = [lr_at_step(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:])) and not math.isnan(values[-1])


def test_eva_g_student_and_teacher_shapes():
    # built on the meta device: shapes only, no memory
    import torch

    from eva_transfer.pretrain import build_student, build_teacher

    cfg = load_config(EVA_G)
    with torch.device("meta"):
        student = build_student(cfg["model"]["backbone"], cfg["model"]["target_dim"])
        teacher = build_teacher(name=cfg["teacher"]["name"], pretrained=False)
    encoder = sum(p.numel() for p in student.backbone.parameters())
    assert abs(encoder / 1e6 - 1011) < 1, encoder  # the paper's 1011M-parameter encoder
    assert tuple(student.lm_head.weight.shape) == (768, 1408)
    assert teacher.out_dim == 768 and teacher.patch_size == 14 and teacher.img_size == (224, 224)
    # same 16x16 grid for student and teacher at 224: the targets need no interpolation
    assert 224 // student.backbone.patch_size == 224 // teacher.patch_size == 16
    assert tuple(teacher.tower.pretrained_cfg["mean"]) == (0.48145466, 0.4578275, 0.40821073)


def test_the_package_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, eva_transfer.pretrain; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'detectron2', 'mmcv', 'mmseg', 'mmdet', 'mmengine', 'open_clip', 'projects', 'tensorboard'}); "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout
