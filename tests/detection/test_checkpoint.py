"""Loading backbone-only checkpoints through the core converter, refusing another backbone's checkpoint, and
atomic saves.

Each released EVA-01 file layout (by the authors' file name) reads through the safe reader, without full
unpickling, and converts as tools/convert_checkpoint.py does (``convert_backbone_file``); anything beyond the
plain-type allow-list is still refused.

Detection checkpoint files other than .pth: .pkl model-zoo files are read without executing code."""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from torch import nn

from eva_transfer import build_eva_vit
from eva_transfer.checkpoint_io import CheckpointError, read_checkpoint
from eva_transfer.export import convert_backbone_file
from eva_transfer_projects.detection.checkpoint import EVADetectionCheckpointer, read_pkl_weights
from eva_transfer_projects.detection.engine import load_det_config

from .conftest import TINY_COCO


def _model(*overrides):
    return instantiate(load_det_config(TINY_COCO, list(overrides)).model)


def test_eva_mim_backbone_checkpoint(tmp_path, logged):
    # an EVA MIM-style file: {"model": {cls_token, mask_token, pos_embed, patch_embed, blocks, norm, lm_head}}
    mim = build_eva_vit("eva_tiny", use_mask_token=True)
    sd = dict(mim.state_dict())
    sd["lm_head.weight"] = torch.randn(32, 64)
    torch.save({"model": sd, "epoch": 3}, tmp_path / "eva_mim.pth")
    model = _model()
    head_before = model.roi_heads.box_predictor[0].cls_score.weight.clone()
    log = logged("eva_transfer_projects.detection.checkpoint")
    EVADetectionCheckpointer(model).load(str(tmp_path / "eva_mim.pth"))
    out = log()
    assert "loaded" in out.lower() and "mask_token" in out  # the converter's report, with what it dropped
    net = model.backbone.net
    torch.testing.assert_close(net.blocks[2].mlp.fc1.weight, sd["blocks.2.mlp.fc1.weight"])
    torch.testing.assert_close(net.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    torch.testing.assert_close(model.roi_heads.box_predictor[0].cls_score.weight, head_before)


def test_checkpoint_of_another_backbone_is_a_clear_error(tmp_path):
    EVADetectionCheckpointer(_model(), str(tmp_path)).save("tiny64")
    wider = _model("model.backbone.net.embed_dim=96")
    with pytest.raises(CheckpointError, match=r"tiny64\.pth.*(shape|width)"):
        EVADetectionCheckpointer(wider).load(str(tmp_path / "tiny64.pth"))
    deeper = _model("model.backbone.net.depth=6")
    with pytest.raises(CheckpointError, match="blocks"):
        EVADetectionCheckpointer(deeper).load(str(tmp_path / "tiny64.pth"))


def test_save_is_atomic_and_roundtrips(tmp_path):
    model = _model()
    ck = EVADetectionCheckpointer(model, str(tmp_path), thing_classes=["a"] * 6)
    ck.save("model_0000009", iteration=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    other = _model()
    extra = EVADetectionCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_load_report_is_logged_once_by_the_main_process(tmp_path, logged, monkeypatch):
    import eva_transfer_projects.detection.checkpoint as det_checkpoint

    path = tmp_path / "eva_mim.pth"
    torch.save({"model": build_eva_vit("eva_tiny").state_dict()}, path)
    core, det = logged("eva_transfer.convert"), logged("eva_transfer_projects.detection.checkpoint")
    EVADetectionCheckpointer(_model()).load(str(path))
    assert det().startswith(f"checkpoint {path}") and det().count("  loaded: ") == 1
    assert "  loaded: " not in core()  # the core logs it at DEBUG only here: one report, not two
    monkeypatch.setattr(det_checkpoint.comm, "is_main_process", lambda: False)
    EVADetectionCheckpointer(_model()).load(str(path))
    assert det().count("  loaded: ") == 1  # other processes load silently


def test_ema_weights_are_evaluated_on_request_and_named_when_left_unused(tmp_path, logged):
    # a file as the authors' EMA-trained EVA-02 systems: the last weights as "model", their EMA as "ema_state"
    trained, averaged = _model(), _model()
    with torch.no_grad():
        for p in averaged.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "ema.pth"
    torch.save({"model": trained.state_dict(), "ema_state": averaged.state_dict(), "iteration": 9}, path)
    log = logged("eva_transfer_projects.detection.checkpoint")

    ema_model = _model()
    EVADetectionCheckpointer(ema_model, ema_weights=True).load(str(path), checkpointables=[])
    for (k, got), want in zip(ema_model.state_dict().items(), averaged.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=k)
    assert "loading its EMA weights ('ema_state'" in log()

    plain = _model()
    EVADetectionCheckpointer(plain).load(str(path), checkpointables=[])
    for (k, got), want in zip(plain.state_dict().items(), trained.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=k)
    assert "also holds EMA weights ('ema_state'" in log() and "use_ema_weights_for_eval_only=True" in log()

    torch.save({"model": trained.state_dict()}, tmp_path / "no_ema.pth")
    with pytest.raises(CheckpointError, match=r"no_ema\.pth: .*use_ema_weights_for_eval_only.*'ema_state'"):
        EVADetectionCheckpointer(_model(), ema_weights=True).load(
            str(tmp_path / "no_ema.pth"), checkpointables=[]
        )


def test_eval_only_reads_the_ema_option_of_the_config(tmp_path, monkeypatch):
    from eva_transfer_projects.detection import engine

    seen = {}

    class Stop(Exception):
        pass

    def spy(model, *args, **kwargs):
        seen["ema_weights"] = kwargs.get("ema_weights")
        raise Stop

    monkeypatch.setattr(engine, "EVADetectionCheckpointer", spy)
    for value in (False, True):
        cfg = load_det_config(TINY_COCO, [f"train.model_ema.use_ema_weights_for_eval_only={value}"])
        with pytest.raises(Stop):
            engine.do_eval_only(cfg)
        assert seen["ema_weights"] is value


# -------------------- fidelity_checkpoint
# Each released EVA-01 file layout (by the authors' file name) reads through the safe reader, without full
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


def _detector():
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.net = build_eva_vit(
        "eva_tiny", depth=2, embed_dim=16, num_heads=2, mlp_dim=32, img_size=32
    )
    return model


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_code_executing_pkl_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model_zoo.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": _Planted(marker)}, "__author__": "x"}))
    with pytest.raises(CheckpointError, match=r"model_zoo\.pkl: not a readable \.pkl weights file .*system"):
        EVADetectionCheckpointer(_detector()).load(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"\x80\x04garbage", b"plain text", b""])
def test_a_damaged_pkl_is_named(tmp_path, data):
    path = tmp_path / "weights.pkl"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"weights\.pkl"):
        EVADetectionCheckpointer(_detector()).load(str(path))


def test_model_zoo_pkl_arrays_are_read(tmp_path):
    blobs = OrderedDict(
        conv1_w=np.arange(6, dtype=np.float32).reshape(2, 3),
        conv1_b=np.ones(2, dtype=np.float64),
        iter=np.int64(3),
    )
    path = tmp_path / "caffe2.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    data = read_pkl_weights(str(path))
    assert (
        np.array_equal(data["blobs"]["conv1_w"], blobs["conv1_w"])
        and data["blobs"]["conv1_b"].dtype == np.float64
    )
    # through the checkpointer: read, then refused by name because it holds no EVA backbone
    with pytest.raises(CheckpointError, match=r"caffe2\.pkl: no backbone keys"):
        EVADetectionCheckpointer(_detector()).load(str(path))
