"""The pre-training commands of docs/model_zoo.md (``tools/convert_checkpoint.py`` on ``eva_psz14.pt``,
``tools/pretrain.py --resume``), run as a user runs them from a folder holding ``configs/`` and ``tools/`` (links to
this repository) and ``checkpoints/``.

- The converter command on ``eva_psz14.pt`` laid out as the authors' file (``model_zoo_files``: ``{"model": ...}``,
  fp16, patch 14 kernel, 16x16 + CLS table, ``mask_token``, ``lm_head``, final ``norm``), shrunk with the tool's
  ``--set`` preset overrides: its printed report accounts for every tensor (pre-training-only ones dropped with
  the reason; the detection preset's relative-position tables, which no MIM file has, left at their initial
  values as in the authors' ViTDet); the file it writes holds, under ``backbone.net.``, every tensor the
  detection backbone (``eva_g_det``) has except those tables, each equal to the authors' offline 14 -> 16
  conversion (their ``interpolate_patch_14to16.py``: kernel and grid bicubic).
- The pre-training resume command: the test makes a checkpoint of its own run (the published config, shrunk by
  overrides, stopped after 2 of 3 steps as a time-limited job stops), puts it under ``checkpoints/`` and runs the
  page's command with the same overrides: it resumes at step 2, trains step 3, and ends with the weights of the
  same run left uninterrupted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from model_zoo_doc import commands_for
from model_zoo_files import ref, write_released_mim_file
from safetensors.torch import load_file

from eva_transfer.presets import build_eva_vit
from eva_transfer.pretrain import load_pretrain_config, train

REPO = Path(__file__).resolve().parents[2]
DIM, DEPTH, HEADS, MLP = 32, 4, 2, 64


def user_folder(tmp_path: Path) -> Path:
    for name in ("configs", "tools"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "checkpoints").mkdir()
    return tmp_path


def run_command(command: str, cwd: Path, replace: dict[str, str], extra: list[str]) -> str:
    """The page's command (``.venv/bin/python`` -> this interpreter, each ``replace`` substring substituted) from
    ``cwd`` with ``extra`` appended; its output (stdout + stderr)."""
    for old, new in replace.items():
        command = command.replace(old, new)
    args = command.split()
    assert args[0] == ".venv/bin/python" and args[1].startswith("tools/")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args[1:], *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{command}\n{out[-6000:]}"
    print(f"{command}: {time.perf_counter() - start:.1f} s")
    return out


def test_converter_command_makes_the_detection_backbone_from_eva_psz14(tmp_path):
    (command,) = commands_for("convert_checkpoint.py")
    assert "checkpoints/eva_psz14.pt" in command and "--preset eva_g_det" in command
    cwd = user_folder(tmp_path)
    mim = write_released_mim_file(cwd / "checkpoints" / "eva_psz14.pt", DIM, DEPTH, HEADS, MLP)
    assert all(v.dtype == torch.float16 for v in mim.values())
    shrink = [f"embed_dim={DIM}", f"depth={DEPTH}", f"num_heads={HEADS}", f"mlp_dim={MLP}"]
    out = run_command(command, cwd, {}, ["--set", *shrink])

    # the printed report: every tensor of the file is loaded, resized or dropped with its reason
    for key in ("mask_token", "lm_head.weight", "lm_head.bias", "norm.weight", "norm.bias", "cls_token"):
        assert f"{key} (pre-training" in out, f"{key} is not reported as dropped\n{out}"
    assert "patch_embed.proj.weight: [32, 3, 14, 14] -> [32, 3, 16, 16]" in out
    assert "pos_embed: [1, 257, 32] -> [1, 197, 32]" in out
    assert "unexpected" not in out
    assert f"loaded: {len(mim) - 6} tensors" in out  # the rest: the 6 dropped above

    # the written file: the detection backbone's tensors under backbone.net., as the authors' 14 -> 16 conversion
    written = load_file(str(cwd / "eva_g_det.safetensors"))
    assert all(k.startswith("backbone.net.") for k in written)
    written = {k[len("backbone.net.") :]: v for k, v in written.items()}
    vit = build_eva_vit("eva_g_det", embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP)
    missing, unexpected = vit.load_state_dict(written, strict=False)
    assert not unexpected
    # the relative-position tables: in no MIM file; zeros in the model, as the authors' ViTDet initialises them
    assert missing and all(k.endswith(("rel_pos_h", "rel_pos_w")) for k in missing)
    assert f"missing (left at their initial values) ({len(missing)})" in out
    authors = ref.mim_to_detection({k: v.float() for k, v in mim.items()})
    assert set(written) == set(authors)
    for key, value in authors.items():
        # the file keeps the checkpoint's precision (fp16): the resized tables rounded to it
        torch.testing.assert_close(written[key].float(), value.to(written[key].dtype).float(), rtol=0, atol=0,
                                   msg=key)  # fmt: skip


def _pretrain_overrides(images: Path) -> list[str]:
    """The published EVA-g config shrunk: a narrow 4-block student at 56 px (a 4x4 grid of patch-14 tokens), an
    untrained 1-block CLIP tower as the teacher (768-d targets as published), 3 steps of batch 2 on CPU, a
    checkpoint every step."""
    student = {"embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "mlp_dim": MLP, "img_size": 56}
    teacher = {"embed_dim": 48, "depth": 1, "num_heads": 2, "num_classes": 768}
    values = {
        "model.backbone_overrides": student,
        "teacher.pretrained": False,
        "teacher.kwargs": teacher,
        "mask.num_patches": 6,
        "mask.min_patches": 2,
        "data.root": str(images),
        "data.img_size": 56,
        "data.workers": 0,
        "optim.zero": False,
        "schedule.total_steps": 3,
        "schedule.warmup_steps": 1,
        "train.batch_size": 2,
        "train.amp": "none",
        "train.device": "cpu",
        "train.checkpoint_every": 1,
        "train.log_every": 1,
        "train.tensorboard": False,
    }
    return [f"{k}={v!r}" for k, v in values.items()]


def test_pretraining_resumes_from_a_checkpoint_of_your_own_run(tmp_path, image_folder, one_thread):
    (command,) = commands_for("pretrain.py")
    placeholder = "checkpoints/<checkpoint of your own run>"
    assert placeholder in command and "--resume" in command
    cwd = user_folder(tmp_path)
    config = REPO / "configs" / "pretrain" / "eva_g_clip_l14.py"
    overrides = _pretrain_overrides(image_folder)

    # your own run, stopped after 2 of its 3 steps (as a time-limited job stops); and the same run to its end
    own = load_pretrain_config(config, [*overrides, f"train.output_dir={str(tmp_path / 'own')!r}",
                                        "train.max_steps_per_run=2"])  # fmt: skip
    assert train(own)["step"] == 2
    shutil.copy(tmp_path / "own" / "last.pth", cwd / "checkpoints" / "eva_g_run_step2.pth")
    whole = load_pretrain_config(config, [*overrides, f"train.output_dir={str(tmp_path / 'whole')!r}"])
    assert train(whole)["step"] == 3

    out = run_command(command, cwd, {placeholder: "checkpoints/eva_g_run_step2.pth"}, ["--opts", *overrides])
    assert "resumed from checkpoints/eva_g_run_step2.pth at step 2/3" in out, out[-3000:]
    resumed = torch.load(
        cwd / "output/pretrain/eva_g_clip_l14/last.pth", map_location="cpu", weights_only=False
    )
    reference = torch.load(tmp_path / "whole" / "last.pth", map_location="cpu", weights_only=False)
    assert resumed["step"] == reference["step"] == 3
    assert resumed["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)
