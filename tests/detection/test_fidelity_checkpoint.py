"""Each released EVA-01 file layout (by the authors' file name) reads through the safe reader, without full
unpickling, and converts as tools/convert_checkpoint.py does (``convert_backbone_file``); anything beyond the
plain-type allow-list is still refused."""

from __future__ import annotations

import argparse
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from eva_transfer import build_eva_vit
from eva_transfer.checkpoint_io import CheckpointError, read_checkpoint
from eva_transfer.export import convert_backbone_file

REPO = Path(__file__).resolve().parents[2]


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _module(Path(__file__).with_name("fidelity_eva01_reference.py"), "fidelity_eva01_reference")

DIM, DEPTH, HEADS, MLP = 32, 4, 2, 64
SHAPE = dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP)


def _released(name: str) -> dict:
    """A small file in the layout of the authors' released ``name``, with its non-tensor entries."""
    if name in ("eva_psz14.pt", "eva_psz14to16.pt"):
        sd = ref.random_mim(DIM, DEPTH, HEADS, MLP)
        if name == "eva_psz14to16.pt":
            sd.update(
                {k: v for k, v in ref.mim_to_detection(sd).items() if k in ("patch_embed.proj.weight",)}
            )
        args = argparse.Namespace(model="eva_g_patch14", lr=np.float64(1.5e-3), input_size=224)
        return {"model": sd, "epoch": 149, "args": args, "scaler": {"scale": 65536.0}}
    sd = ref.random_backbone(DIM, DEPTH, HEADS, MLP, train_img=1280, window=16, global_blocks=[3])
    model = {f"backbone.net.{k}": v for k, v in sd.items()}
    model["roi_heads.box_predictor.0.cls_score.weight"] = torch.zeros(81, 8)
    trainer = {"iteration": np.int64(44999), "hooks": {}, "grad_scaler": {"scale": np.float32(1024.0)}}
    return {"model": model, "iteration": 44999, "trainer": trainer}


RELEASED = [
    "eva_psz14.pt",
    "eva_psz14to16.pt",
    "eva_o365.pth",
    "eva_coco_det.pth",
    "eva_coco_seg.pth",
    "eva_lvis.pth",
]


@pytest.mark.parametrize("name", RELEASED)
def test_released_layout_reads_safely_and_converts(name, tmp_path):
    path = tmp_path / name
    torch.save(_released(name), path)
    with pytest.raises(
        pickle.UnpicklingError
    ):  # plain weights_only refuses it: the allow-list is what reads it
        torch.load(path, weights_only=True)
    obj = read_checkpoint(path)
    assert isinstance(obj["model"], dict)
    with torch.device("meta"):  # as the tool: shapes only
        model = build_eva_vit("eva_g_det", **SHAPE)
    out, reports = convert_backbone_file(path, model=model)
    printed = "\n".join(r.summary() for r in reports)
    assert f"checkpoint {path}" in printed and "loaded:" in printed
    assert out and set(out) <= set(model.state_dict()) and all(v.device.type == "cpu" for v in out.values())
    if name == "eva_psz14.pt":
        assert "patch_embed.proj.weight: [32, 3, 14, 14] -> [32, 3, 16, 16]" in printed
    if name.startswith("eva_psz14"):
        assert "pos_embed: [1, 257, 32] -> [1, 197, 32]" in printed  # the authors' 14x14 table
    else:
        assert "pos_embed:" not in printed  # a detector's 14x14 table loads unchanged


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_other_objects_are_still_refused(tmp_path):
    path = tmp_path / "eva_o365.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "trainer": _Payload()}, path)
    with pytest.raises(CheckpointError, match="eva_o365.pth"):
        read_checkpoint(path)
