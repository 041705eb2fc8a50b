"""End-to-end training of the tiny preset: learning, export, resume, skipped files."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eva_transfer import build_eva_vit, load_checkpoint, read_checkpoint
from eva_transfer.pretrain import (
    BlockMaskGenerator,
    MIMDataset,
    list_images,
    load_pretrain_config,
    mim_loss,
    train,
)
from eva_transfer.pretrain.build import build_models
from eva_transfer.pretrain.data import collate
from eva_transfer.pretrain.trainer import TrainSummary

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(folder, n, seed):
    ds = MIMDataset(list_images(folder), 128, BlockMaskGenerator(8, mask_ratio=0.4, min_patches=4), seed=seed)
    return collate([ds[i] for i in range(n)])


@pytest.mark.slow
def test_tiny_preset_learns_and_exports_a_loadable_backbone(
    tmp_path, image_folder, make_images, tiny_config, tiny_overrides
):
    out = tmp_path / "run"
    cfg = load_pretrain_config(
        tiny_config, tiny_overrides(image_folder, out, **{"schedule.total_steps": 200})
    )
    summary = train(cfg)
    losses = np.array([r["loss"] for r in summary["history"]])
    assert len(losses) == 200 and summary["step"] == 200 and not summary["interrupted"]
    print(
        f"loss: step 1 {losses[0]:.3f}, first 10 {losses[:10].mean():.3f}, last 20 {losses[-20:].mean():.3f}"
    )
    # random init predicts nothing (cosine ~0); 200 steps reach a clear negative cosine
    assert losses[0] > -0.1
    assert losses[-20:].mean() < losses[:10].mean() - 0.25
    assert losses[-20:].mean() < -0.5

    # held-out images: the trained student beats the best constant prediction of the teacher's tokens
    held_out = tmp_path / "held_out"
    make_images(held_out, 32, seed=99)
    batch = _batch(held_out, 32, seed=7)
    torch.manual_seed(0)
    student, teacher = build_models(cfg, torch.device("cpu"))
    student.load_state_dict(read_checkpoint(out / "last.pth")["model"])
    student.eval()
    mean = torch.tensor(cfg["data"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["data"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        held_loss = mim_loss(student, teacher, batch["image"], batch["mask"], mean, std, (8, 8)).item()
        targets = teacher(batch["image"], (8, 8))[batch["mask"]]
    direction = F.normalize(targets, dim=-1).mean(0, keepdim=True)
    constant = -F.cosine_similarity(targets, direction, dim=-1).mean().item()
    print(f"held-out loss {held_loss:.3f}, best constant predictor {constant:.3f}")
    assert held_loss < constant - 0.15

    # the exported backbone loads into the detection and segmentation tiny backbones
    export = summary["export"]
    assert export.endswith(".safetensors") and os.path.isfile(export)
    det = build_eva_vit("eva_tiny_det")
    report = load_checkpoint(det, export)
    assert all("rel_pos" in k for k in report.missing), (
        report.missing
    )  # zero-init tables pre-training never has
    assert len(report.missing) == 2 * det.depth and not report.unexpected
    assert {"lm_head.weight", "lm_head.bias", "mask_token", "cls_token"} <= set(report.dropped)
    seg = build_eva_vit("eva_tiny_seg")
    report = load_checkpoint(seg, export)
    assert report.missing == [] and not report.unexpected
    torch.testing.assert_close(seg.blocks[3].mlp.fc2.weight, student.backbone.blocks[3].mlp.fc2.weight)
    torch.testing.assert_close(det.patch_embed.proj.weight, student.backbone.patch_embed.proj.weight)


def _records(summary):
    return {r["step"]: (r["loss"], r["lr"]) for r in summary.history}


def test_resume_continues_the_same_schedule(tmp_path, image_folder, tiny_config, tiny_overrides):
    common = {"schedule.total_steps": 16, "schedule.warmup_steps": 4, "train.checkpoint_every": 6}
    reference = _records(
        train(load_pretrain_config(tiny_config, tiny_overrides(image_folder, tmp_path / "a", **common)))
    )
    assert sorted(reference) == list(range(1, 17))

    # a crash at step 9: the run restarts from the periodic checkpoint of step 6
    cfg = load_pretrain_config(tiny_config, tiny_overrides(image_folder, tmp_path / "b", **common))

    def crash(record):
        if record["step"] == 9:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=[crash])
    assert read_checkpoint(tmp_path / "b" / "last.pth")["step"] == 6
    resumed = _records(train(cfg))
    assert sorted(resumed) == list(range(7, 17))
    for step, (loss, lr) in resumed.items():
        assert lr == reference[step][1]
        assert loss == pytest.approx(reference[step][0], abs=1e-6), step
    # the log keeps one record per step: those the crashed run wrote after its checkpoint are replaced
    with open(tmp_path / "b" / "log.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 17))

    # Ctrl-C at step 4: the step finishes, a checkpoint is written at 4, the rerun continues from there
    cfg = load_pretrain_config(tiny_config, tiny_overrides(image_folder, tmp_path / "c", **common))

    def interrupt(record):
        if record["step"] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(cfg, callbacks=[interrupt])
    assert first.interrupted and first.step == 4 and first.export is None
    assert isinstance(first, TrainSummary) and first["step"] == 4  # indexing by name still works
    with pytest.raises(KeyError):
        first["steps"]
    assert read_checkpoint(tmp_path / "c" / "last.pth")["step"] == 4
    second = train(cfg)
    assert not second.interrupted and second.export is not None
    resumed = _records(second)
    assert sorted(resumed) == list(range(5, 17))
    for step, (loss, lr) in resumed.items():
        assert lr == reference[step][1]
        assert loss == pytest.approx(reference[step][0], abs=1e-6), step


def test_unreadable_images_are_counted_and_empty_data_fails(
    tmp_path, make_images, tiny_config, tiny_overrides
):
    folder = tmp_path / "imgs"
    make_images(folder, 16)
    (folder / "img_0003.png").write_bytes(b"not a png")
    (folder / "img_0011.png").write_bytes(b"")
    cfg = load_pretrain_config(
        tiny_config,
        tiny_overrides(
            folder,
            tmp_path / "run",
            **{
                "schedule.total_steps": 4,
                "schedule.warmup_steps": 2,  # the tiny config's 20 would not fit the run
                "train.batch_size": 8,
                "train.tensorboard": True,
            },
        ),
    )
    summary = train(cfg)
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    # 4 steps of 8 = 2 epochs of 16 images, each file read once per epoch: 2 bad files x 2 epochs
    assert summary["skipped_images"] == 4
    assert summary["history"][-1]["skipped"] == 4

    (tmp_path / "empty").mkdir()
    cfg = load_pretrain_config(tiny_config, tiny_overrides(tmp_path / "empty", tmp_path / "run2"))
    with pytest.raises(ValueError, match="contains no images"):
        train(cfg)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_mixed_precision_path(tmp_path, image_folder, tiny_config, tiny_overrides, monkeypatch, dtype):
    # CUDA is not available here: run the autocast + (for fp16) dynamic loss-scaling path on the CPU
    from eva_transfer.pretrain import trainer

    monkeypatch.setattr(trainer, "_amp_dtype", lambda name, device: dtype)
    # optim.zero (the EVA-g setting) with a single process falls back to plain AdamW
    cfg = load_pretrain_config(
        tiny_config,
        tiny_overrides(
            image_folder,
            tmp_path / "run",
            **{"schedule.total_steps": 4, "schedule.warmup_steps": 2, "optim.zero": True},
        ),
    )
    summary = train(cfg)
    losses = [r["loss"] for r in summary["history"]]
    assert len(losses) == 4 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    state = read_checkpoint(tmp_path / "run" / "last.pth")
    assert (state["scaler"] is not None) == (dtype == torch.float16)
    if dtype == torch.float16:
        assert state["scaler"]["scale"] > 0


def test_patch14_export_converts_into_the_patch16_detection_backbone(tmp_path):
    # the EVA-g situation at tiny scale: pre-trained with 14 px patches on a 16x16 grid, detection uses 16 px
    from eva_transfer import save_checkpoint
    from eva_transfer.pretrain import build_student, export_state_dict

    student = build_student("eva_tiny", 32, patch_size=14, img_size=224)
    save_checkpoint(export_state_dict(student), tmp_path / "backbone.safetensors")
    det = build_eva_vit("eva_tiny_det")
    report = load_checkpoint(det, tmp_path / "backbone.safetensors", verbose=False)
    assert set(report.resized) == {"patch_embed.proj.weight", "pos_embed"}
    assert report.resized["patch_embed.proj.weight"][:2] == ((64, 3, 14, 14), (64, 3, 16, 16))
    assert all("rel_pos" in k for k in report.missing) and not report.unexpected
    assert det(torch.rand(1, 3, 128, 128)).shape == (1, 64, 8, 8)
