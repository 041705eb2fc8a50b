"""Configs: the published EVA-g settings, inheritance, overrides and typo errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from eva_transfer import PRESETS
from eva_transfer.pretrain import ConfigError, load_pretrain_config, lr_at_step

REPO = Path(__file__).resolve().parents[2]
EVA_G = REPO / "configs" / "pretrain" / "eva_g_clip_l14.py"
TINY_CONFIG = REPO / "configs" / "pretrain" / "eva_tiny_cpu.py"


def test_eva_g_config_is_the_published_recipe():
    cfg = load_pretrain_config(EVA_G)
    assert cfg["model"]["preset"] == "eva_g" and cfg["model"]["target_dim"] == 768
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
    cfg = load_pretrain_config(TINY_CONFIG)
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["betas"] == (0.9, 0.98)  # inherited
    assert cfg["model"]["preset"] == "eva_tiny" and cfg["train"]["amp"] == "none"
    shape = ("embed_dim", "depth", "num_heads", "mlp_dim", "patch_size")
    for other in ("eva_tiny_det", "eva_tiny_seg"):
        assert all(PRESETS["eva_tiny"][k] == PRESETS[other][k] for k in shape)


def test_overrides_and_typos(tmp_path):
    cfg = load_pretrain_config(
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
        load_pretrain_config(TINY_CONFIG, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        load_pretrain_config(TINY_CONFIG, ["train.batchsize=8"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_pretrain_config(TINY_CONFIG, ["optim.lr"])
    bad = tmp_path / "bad.py"
    bad.write_text(f"_base_ = {str(TINY_CONFIG)!r}\nconfig = dict(schedule=dict(warmup_step=3))\n")
    with pytest.raises(
        ConfigError,
        match=r"bad.py: unknown config key 'schedule.warmup_step'; did you mean "
        r"'schedule.warmup_steps'",
    ):
        load_pretrain_config(bad)


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

    cfg = load_pretrain_config(EVA_G)
    with torch.device("meta"):
        student = build_student(cfg["model"]["preset"], cfg["model"]["target_dim"])
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
        "{'detectron2', 'mmcv', 'mmseg', 'mmdet', 'mmengine', 'open_clip', 'eva_transfer_projects', 'tensorboard'}); "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=0", r"train\.batch_size must be an integer >= 1"),
        ("optim.lr='abc'", r"'optim\.lr' takes a number \(default .*\); got 'abc'"),
        ("optim.lr=abc", r"'optim\.lr' takes a number"),
        ("schedule.epochs='ten'", r"'schedule\.epochs' takes a number"),
        ("schedule.total_steps=0", r"schedule\.total_steps must be an integer >= 1 or None, got 0"),
        ("optim.clip_grad=0", r"optim\.clip_grad must be a number > 0 .* or None"),
        (
            "schedule.warmup_epochs=200",
            r"schedule\.warmup_epochs=200 is longer than the run \(schedule\.epochs=",
        ),
        ("data.workers=-1", r"data\.workers must be an integer >= 0"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(None, [override])  # the defaults: a schedule in epochs


def test_warmup_longer_than_the_run_is_named():
    with pytest.raises(
        ConfigError, match=r"schedule\.warmup_steps=50 is longer than the run .*total_steps=10"
    ):
        load_pretrain_config(TINY_CONFIG, ["schedule.total_steps=10", "schedule.warmup_steps=50"])
    assert (
        load_pretrain_config(TINY_CONFIG, ["optim.clip_grad=None"])["optim"]["clip_grad"] is None
    )  # no clipping


def test_warmup_from_epochs_longer_than_the_given_steps_fails_before_training(
    tmp_path, make_images, tiny_config, tiny_overrides
):
    from eva_transfer.pretrain import train

    folder = make_images(tmp_path / "imgs", 8)[0].parent
    cfg = load_pretrain_config(
        tiny_config,
        tiny_overrides(folder, tmp_path / "run", **{"schedule.total_steps": 2, "schedule.warmup_epochs": 3,
                                                    "schedule.warmup_steps": None,
                                                    "train.batch_size": 4}),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"warm-up \(6 steps .*\) is longer than the run \(2 steps"):
        train(cfg)
    assert not list((tmp_path / "run").glob("*.pt*"))


def test_clip_grad_none_trains_without_clipping(tmp_path, make_images, tiny_config, tiny_overrides):
    from eva_transfer.pretrain import train

    folder = make_images(tmp_path / "imgs", 8)[0].parent
    overrides = {
        "schedule.total_steps": 2,
        "schedule.warmup_steps": 1,
        "train.batch_size": 4,
        "train.export": None,
        "train.tensorboard": False,
    }
    tiny = tiny_overrides(folder, tmp_path / "a", **overrides)
    clipped = train(load_pretrain_config(tiny_config, tiny + ["optim.clip_grad=1e-6"]))
    unclipped = train(
        load_pretrain_config(
            tiny_config, tiny_overrides(folder, tmp_path / "b", **overrides) + ["optim.clip_grad=None"]
        )
    )
    # same first step (same seed and data): the logged norm is the unclipped norm in both runs
    first_clipped, first_free = clipped["history"][0], unclipped["history"][0]
    assert first_free["grad_norm"] == pytest.approx(first_clipped["grad_norm"], rel=1e-5)
    assert first_free["grad_norm"] > 1e-6
    # clipping to 1e-6 barely moves the weights, no clipping moves them: the second losses differ
    assert clipped["history"][1]["loss"] != pytest.approx(unclipped["history"][1]["loss"], rel=1e-6)
